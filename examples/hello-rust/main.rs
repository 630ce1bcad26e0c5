// The brief's Rust microservice: built with `rustc main.rs --target wasm32-wasi`.
// Served over HTTP, its output becomes the response body (text/plain, 200).
fn main() {
    println!("Hello from a Rust Wasm microservice!");
}
