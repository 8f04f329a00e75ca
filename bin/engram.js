#!/usr/bin/env node
// the `engram` command. engram ships its TypeScript sources and runs them through tsx.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');
