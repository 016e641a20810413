// Command servefile serves one file with http.ServeFile at every path. It is
// the baseline that bench/pull.sh compares warm blob throughput with: the
// plainest Go file server, which copies with sendfile as regwarm does.
//
//	servefile -listen 127.0.0.1:0 -file /path/to/blob
//
// It prints "listening ADDR" on stdout once it accepts connections and exits
// on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "servefile:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	file := flag.String("file", "", "the file to serve")
	flag.Parse()
	if *file == "" {
		return errors.New("-file is required")
	}
	if _, err := os.Stat(*file); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, *file) }),
		ReadHeaderTimeout: 10 * time.Second,
	}
	fmt.Println("listening", ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
