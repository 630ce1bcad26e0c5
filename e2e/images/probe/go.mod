module wasmfleet.dev/e2e/images/probe

go 1.26.0
