// A run-to-completion job: counts the words of every file under the directory given as its
// first argument (a preopened ConfigMap), prints one line per file, exits 1 if none is found.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: wordcount DIR")
		os.Exit(2)
	}
	entries, err := os.ReadDir(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "wordcount:", err)
		os.Exit(1)
	}
	names := []string{}
	for _, entry := range entries {
		if !entry.IsDir() && !strings.HasPrefix(entry.Name(), ".") {
			names = append(names, entry.Name())
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		fmt.Fprintln(os.Stderr, "wordcount: no files")
		os.Exit(1)
	}
	total := 0
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(os.Args[1], name))
		if err != nil {
			fmt.Fprintln(os.Stderr, "wordcount:", err)
			os.Exit(1)
		}
		words := len(strings.Fields(string(data)))
		total += words
		fmt.Printf("%s %d\n", name, words)
	}
	fmt.Printf("total %d\n", total)
}
