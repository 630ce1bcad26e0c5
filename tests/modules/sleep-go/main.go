// A Go WAGI service that sleeps for the number of milliseconds in its query string before
// answering. Go's runtime waits in poll_oneoff, so this checks that a sleeping guest is still
// stopped at its deadline.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	millis, _ := strconv.Atoi(os.Getenv("QUERY_STRING"))
	time.Sleep(time.Duration(millis) * time.Millisecond)
	fmt.Printf("content-type: text/plain\n\nslept %d ms\n", millis)
}
