//go:build ignore

// duration prints a Go duration in whole seconds, for soak.sh.
package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	d, err := time.ParseDuration(os.Args[1])
	if err != nil {
		os.Exit(1)
	}
	fmt.Println(int(d.Seconds()))
}
