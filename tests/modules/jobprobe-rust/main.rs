// A Rust job for comparing the agent's job mode with the native wasmtime CLI: prints its
// arguments and sorted environment, reads /input/data.txt if present, exits with the code
// given as "exit=N".
use std::process::exit;

fn main() {
    let mut code = 0;
    for (index, arg) in std::env::args().enumerate() {
        println!("arg[{index}]={arg}");
        if let Some(value) = arg.strip_prefix("exit=") {
            code = value.parse().unwrap_or(99);
        }
    }
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (key, value) in vars {
        println!("env {key}={value}");
    }
    match std::fs::read_to_string("/input/data.txt") {
        Ok(text) => println!("data: {}", text.trim()),
        Err(error) => println!("data: {:?}", error.kind()),
    }
    eprintln!("jobprobe-rust exiting with {code}");
    exit(code);
}
