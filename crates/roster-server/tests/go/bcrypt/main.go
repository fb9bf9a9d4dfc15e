// Command bcrypt times etcd's password check (golang.org/x/crypto/bcrypt,
// which etcd's auth store uses) for roster-server's bcrypt bench. Built
// offline from Debian's packages in GOPATH mode:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o bcrypt main.go
//
// Usage: bcrypt bench COST N: one hash at COST, then N CompareHashAndPassword
// calls, one line each with its nanoseconds.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(2)
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fail("not a number: %q", s)
	}
	return n
}

func main() {
	if len(os.Args) != 4 || os.Args[1] != "bench" {
		fail("usage: bcrypt bench COST N")
	}
	pw := []byte("bench-password")
	h, err := bcrypt.GenerateFromPassword(pw, atoi(os.Args[2]))
	if err != nil {
		fail("%v", err)
	}
	n := atoi(os.Args[3])
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := bcrypt.CompareHashAndPassword(h, pw); err != nil {
			fail("%v", err)
		}
		fmt.Println(time.Since(start).Nanoseconds())
	}
}
