// The brief's Go microservice: built with `GOOS=wasip1 GOARCH=wasm go build`.
// Served over HTTP, its output becomes the response body (text/plain, 200).
package main

import "fmt"

func main() {
	fmt.Println("Hello from a Go Wasm microservice!")
}
