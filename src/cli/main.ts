// the engram command line: `engram <command> [options]`.

import { Gpu } from '../gpu/device.ts';

const HELP = `usage: engram <command>

commands:
  info     the WebGPU adapter engram will use: name, features, key limits
  help     this text
`;

async function info(): Promise<void> {
  const gpu = await Gpu.create();
  try {
    const f = gpu.features;
    const l = gpu.limits;
    console.log(`adapter: ${gpu.adapterName}`);
    console.log(`features: shader-f16=${f.f16} subgroups=${f.subgroups} timestamp-query=${f.timestamps} subgroup-matrix=${f.subgroupMatrix.length} configs`);
    for (const c of f.subgroupMatrix) console.log(`  subgroup matrix ${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`);
    for (const k of ['maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup']) {
      console.log(`${k}: ${l[k]}`);
    }
  } finally {
    gpu.destroy();
  }
}

const [cmd = 'help'] = process.argv.slice(2);
switch (cmd) {
  case 'info':
    await info();
    break;
  case 'help':
  case '--help':
  case '-h':
    console.log(HELP);
    break;
  default:
    console.error(`engram: unknown command '${cmd}'\n\n${HELP}`);
    process.exit(2);
}
