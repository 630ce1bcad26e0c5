// A Rust WAGI echo: answers with the request method, path, query and body, and sets a header
// and the status from the query ("status=N"), so the agent's tests see both directions.
use std::io::Read;

fn main() {
    let get = |name: &str| std::env::var(name).unwrap_or_default();
    let query = get("QUERY_STRING");
    let status = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("status="))
        .unwrap_or("200")
        .to_string();
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).unwrap_or_default();
    println!("status: {status}");
    println!("content-type: application/x-echo");
    println!("x-lang: rust");
    println!();
    println!("{} {} {}", get("REQUEST_METHOD"), get("PATH_INFO"), query);
    println!("x-test={}", get("HTTP_X_TEST"));
    print!("{}", String::from_utf8_lossy(&body));
}
