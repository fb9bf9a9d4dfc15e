// Command interop is etcd's own Go client on the other side of Roster's
// registry: it dials etcd:///<prefix> through etcd's gRPC resolver with
// round_robin and calls every instance it finds, and it registers an
// endpoint with etcd's endpoints.Manager for the Rust SDK to discover.
//
// Built offline from Debian's packages in GOPATH mode:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o interop main.go
//
// The hello service's messages are encoded by hand (two string fields), so
// no generated Go code is needed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
	"go.etcd.io/etcd/clientv3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: interop dial|register [flags]")
	}
	switch os.Args[1] {
	case "dial":
		dial(os.Args[2:])
	case "register":
		register(os.Args[2:])
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "interop:", msg)
	os.Exit(1)
}

func client(endpoints string) *clientv3.Client {
	c, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fail("etcd client: " + err.Error())
	}
	return c
}

// dial calls hello.Hello/Say `calls` times over etcd:///<target> and prints
// one "reply <instance>" line per call, then "done".
func dial(args []string) {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	eps := fs.String("endpoints", "127.0.0.1:2379", "registry endpoints")
	target := fs.String("target", "/services/hello", "key prefix the resolver watches")
	authority := fs.String("authority", "hello", ":authority sent; the default would be the key path")
	calls := fs.Int("calls", 30, "calls to make")
	want := fs.Int("want", 1, "instances to wait for before counting")
	fs.Parse(args)

	c := client(*eps)
	defer c.Close()
	b, err := resolver.NewBuilder(c)
	if err != nil {
		fail("resolver: " + err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, "etcd:///"+*target,
		grpc.WithResolvers(b),
		grpc.WithInsecure(),
		grpc.WithAuthority(*authority),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
	)
	if err != nil {
		fail("dial: " + err.Error())
	}
	defer conn.Close()

	// Round robin spreads calls over the ready instances; wait until the
	// wanted number have answered before the counted calls.
	seen := map[string]bool{}
	for len(seen) < *want {
		inst, err := say(ctx, conn)
		if err != nil {
			fail("warm-up call: " + err.Error())
		}
		seen[inst] = true
	}
	counts := map[string]int{}
	for i := 0; i < *calls; i++ {
		inst, err := say(ctx, conn)
		if err != nil {
			fail(fmt.Sprintf("call %d: %v", i, err))
		}
		counts[inst]++
		fmt.Println("reply", inst)
	}
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("count %s %d\n", n, counts[n])
	}
	fmt.Println("done")
}

func say(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	call, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req := raw(field(1, "go"))
	var resp raw
	if err := conn.Invoke(call, "/hello.Hello/Say", &req, &resp, grpc.WaitForReady(true), grpc.ForceCodec(rawCodec{})); err != nil {
		return "", err
	}
	return stringField(resp, 2)
}

// register adds <key> -> <addr> with endpoints.Manager on a lease it keeps
// alive, prints "registered", and waits for SIGTERM or stdin to close.
func register(args []string) {
	fs := flag.NewFlagSet("register", flag.ExitOnError)
	eps := fs.String("endpoints", "127.0.0.1:2379", "registry endpoints")
	target := fs.String("target", "/services/hello", "the service's key prefix")
	key := fs.String("key", "/services/hello/go", "the endpoint's key")
	addr := fs.String("addr", "127.0.0.1:1", "the endpoint's address")
	ttl := fs.Int64("ttl", 5, "lease TTL in seconds")
	fs.Parse(args)

	c := client(*eps)
	defer c.Close()
	ctx := context.Background()
	m, err := endpoints.NewManager(c, *target)
	if err != nil {
		fail("manager: " + err.Error())
	}
	lease, err := c.Grant(ctx, *ttl)
	if err != nil {
		fail("grant: " + err.Error())
	}
	meta := map[string]string{"zone": "go-zone"}
	if err := m.AddEndpoint(ctx, *key, endpoints.Endpoint{Addr: *addr, Metadata: meta}, clientv3.WithLease(lease.ID)); err != nil {
		fail("add endpoint: " + err.Error())
	}
	if _, err := c.KeepAlive(ctx, lease.ID); err != nil {
		fail("keepalive: " + err.Error())
	}
	fmt.Println("registered")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	closed := make(chan struct{})
	go func() {
		buf := make([]byte, 1)
		for {
			if _, err := os.Stdin.Read(buf); err != nil {
				close(closed)
				return
			}
		}
	}()
	select {
	case <-stop:
	case <-closed:
	}
	m.DeleteEndpoint(ctx, *key)
}

// === protobuf by hand: messages of string fields only ===

type raw []byte

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*raw)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*raw)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

func varint(n uint64) []byte {
	var out []byte
	for n >= 0x80 {
		out = append(out, byte(n)|0x80)
		n >>= 7
	}
	return append(out, byte(n))
}

func field(num uint64, s string) []byte {
	out := varint(num<<3 | 2)
	out = append(out, varint(uint64(len(s)))...)
	return append(out, s...)
}

func readVarint(b []byte) (uint64, int) {
	var n uint64
	for i := 0; i < len(b) && i < 10; i++ {
		n |= uint64(b[i]&0x7f) << (7 * uint(i))
		if b[i] < 0x80 {
			return n, i + 1
		}
	}
	return 0, 0
}

// stringField finds length-delimited field `num`; other fields must be
// length-delimited too (SayReply has only strings).
func stringField(b []byte, num uint64) (string, error) {
	for len(b) > 0 {
		tag, n := readVarint(b)
		if n == 0 || tag&7 != 2 {
			return "", fmt.Errorf("unexpected wire data")
		}
		b = b[n:]
		l, m := readVarint(b)
		if m == 0 || uint64(len(b)-m) < l {
			return "", fmt.Errorf("truncated field")
		}
		if tag>>3 == num {
			return string(b[m : m+int(l)]), nil
		}
		b = b[m+int(l):]
	}
	return "", fmt.Errorf("field %d missing", num)
}
