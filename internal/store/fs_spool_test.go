package store

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestSpool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fs, err := NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	repo := Repo{Registry: "hub", Name: "app"}
	data := bytes.Repeat([]byte("spool"), 1000)
	d := digest.FromBytes(data)

	t.Run("verified and committed", func(t *testing.T) {
		sp, err := fs.Spool(ctx, d, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sp.Close() }() // discards the spool if a check failed first
		if _, err := sp.Write(data[:100]); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 100)
		if _, err := sp.ReadAt(got, 0); err != nil || !bytes.Equal(got, data[:100]) {
			t.Fatalf("ReadAt while writing: %v", err)
		}
		if _, err := fs.HasBlob(ctx, d); !errors.Is(err, ErrBlobUnknown) {
			t.Fatal("partial spool visible as a blob")
		}
		if err := sp.Verify(); !errors.Is(err, ErrSizeMismatch) {
			t.Fatalf("Verify of a short spool: %v", err)
		}
		if _, err := sp.Write(data[100:]); err != nil {
			t.Fatal(err)
		}
		if err := sp.Verify(); err != nil {
			t.Fatal(err)
		}
		if _, err := sp.Write([]byte("x")); err == nil {
			t.Fatal("write after Verify accepted")
		}
		if err := sp.Commit(ctx, repo); err != nil {
			t.Fatal(err)
		}
		if n, err := fs.StatBlob(ctx, repo, d); err != nil || n != int64(len(data)) {
			t.Fatalf("after commit: %d, %v", n, err)
		}
	})
	t.Run("digest mismatch never stored", func(t *testing.T) {
		bad := digest.FromString("other")
		sp, err := fs.Spool(ctx, bad, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sp.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := sp.Commit(ctx, repo); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("Commit: %v", err)
		}
		if err := sp.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := fs.HasBlob(ctx, bad); !errors.Is(err, ErrBlobUnknown) {
			t.Fatal("mismatched spool stored")
		}
	})
	t.Run("too long", func(t *testing.T) {
		sp, err := fs.Spool(ctx, d, 10)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sp.Close() }() // discards the spool if a check failed first
		if _, err := sp.Write(data); !errors.Is(err, ErrSizeMismatch) {
			t.Fatalf("overlong write: %v", err)
		}
	})
}
