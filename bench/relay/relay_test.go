package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestRelayVerify(t *testing.T) {
	good := []byte("the blob's bytes")
	d := digest.FromBytes(good)
	body := good
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(body)
	}))
	defer up.Close()
	for _, verify := range []bool{false, true} {
		front := httptest.NewServer(&relay{upstream: up.URL, verify: verify, client: http.DefaultTransport})
		get := func() ([]byte, error) {
			res, err := http.Get(front.URL + "/v2/app/blobs/" + d.String())
			if err != nil {
				return nil, err
			}
			defer res.Body.Close()
			return io.ReadAll(res.Body)
		}
		body = good
		if got, err := get(); err != nil || string(got) != string(good) {
			t.Fatalf("verify=%v: %q, %v", verify, got, err)
		}
		body = []byte("the blob's bytez")
		got, err := get()
		if verify && (err == nil || len(got) != len(good)-1) {
			t.Fatalf("corrupt blob through the verifying relay: %d bytes, %v; want the last byte withheld", len(got), err)
		}
		if !verify && string(got) != string(body) {
			t.Fatalf("copying relay changed the body: %q, %v", got, err)
		}
		front.Close()
	}
}
