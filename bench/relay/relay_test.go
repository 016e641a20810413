package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestRelay(t *testing.T) {
	good := []byte("the blob's bytes")
	d := digest.FromBytes(good)
	body := good
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(body)
	}))
	defer up.Close()
	for _, mode := range []string{"copy", "verify", "store"} {
		r := &relay{upstream: up.URL, verify: mode != "copy", client: http.DefaultTransport}
		if mode == "store" {
			r.store = t.TempDir()
		}
		front := httptest.NewServer(r)
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
			t.Fatalf("%s: %q, %v", mode, got, err)
		}
		if mode == "store" {
			path := filepath.Join(r.store, d.Encoded())
			var stored []byte
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if stored, _ = os.ReadFile(path); stored != nil {
					break
				}
			}
			if string(stored) != string(good) {
				t.Fatalf("store: stored %q, want %q", stored, good)
			}
			_ = os.Remove(path)
		}
		body = []byte("the blob's bytez")
		got, err := get()
		if mode != "copy" && (err == nil || len(got) != len(good)-1) {
			t.Fatalf("%s: corrupt blob relayed: %d bytes, %v; want the last byte withheld", mode, len(got), err)
		}
		if mode == "copy" && string(got) != string(body) {
			t.Fatalf("copying relay changed the body: %q, %v", got, err)
		}
		front.Close()
		if mode == "store" {
			if left, _ := os.ReadDir(r.store); len(left) != 0 {
				t.Fatalf("store: a corrupt blob left %d files", len(left))
			}
		}
	}
}

func TestRelayStoreUnwritable(t *testing.T) {
	good := []byte("the blob's bytes")
	d := digest.FromBytes(good)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(good)
	}))
	defer up.Close()
	front := httptest.NewServer(&relay{upstream: up.URL, verify: true, store: filepath.Join(t.TempDir(), "missing"), client: http.DefaultTransport})
	defer front.Close()
	res, err := http.Get(front.URL + "/v2/app/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d with an unwritable store, want 502", res.StatusCode)
	}
}
