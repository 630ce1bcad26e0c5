"""Compile, cache and run Wasm modules: the agent's sandbox.

- `engine`: one wasmtime Engine per setting set, the epoch ticker, the linker with the
  agent's host functions, and the compiled-code cache on disk.
- `sandbox`: what one run of a module may see (args, env, directories, stdin) and the limits it
  runs under (memory, deadline, fuel, output size), enforced while it runs.
- `cgi`: the WAGI request model: CGI variables in, CGI headers and body out.
- `service`: an HTTP service (a fresh instance per request) and a run-to-completion job.
"""
