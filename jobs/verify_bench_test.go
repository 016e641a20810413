package jobs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regwarm/regwarm/internal/manifest"
	"github.com/regwarm/regwarm/internal/store"
	"github.com/regwarm/regwarm/jobs"
)

// BenchmarkVerify compares a verification of a store holding one image of
// 64 layers of 4 MiB with plain sha256 of the same files: the verifier's
// overhead beyond hashing should stay small (throughput ratio >= 0.8).
//
//	go test -run '^$' -bench BenchmarkVerify -benchtime 10x ./jobs/
func BenchmarkVerify(b *testing.B) {
	const layers, layerSize = 64, 4 << 20
	ctx := context.Background()
	root := b.TempDir()
	st, err := store.NewFS(root)
	if err != nil {
		b.Fatal(err)
	}
	repo := store.Repo{Registry: "local", Name: "bench"}
	rng := rand.NewChaCha8([32]byte{1})
	put := func(data []byte) digest.Digest {
		d := digest.FromBytes(data)
		if err := st.PutBlob(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		return d
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cfgD := put(cfg)
	descs := make([]string, 0, layers)
	data := make([]byte, layerSize)
	for range layers {
		_, _ = rng.Read(data)
		descs = append(descs, fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d}`, layerType, put(data), layerSize))
	}
	m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		manifest.OCIManifest, cfgD, len(cfg), strings.Join(descs, ",")))
	err = st.PutManifest(ctx, repo, store.Manifest{MediaType: manifest.OCIManifest, Digest: digest.FromBytes(m), Data: m}, store.PutManifestOptions{})
	if err != nil {
		b.Fatal(err)
	}

	var paths []string
	var total int64
	err = st.Blobs(ctx, func(d digest.Digest, size int64) error {
		paths = append(paths, filepath.Join(root, "blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded()))
		total += size
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}

	b.Run("verify", func(b *testing.B) {
		v := jobs.NewVerifier(nil, st, nil, nil)
		b.SetBytes(total)
		for b.Loop() {
			rep, err := v.Run(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if rep.Summary.Problems != 0 || rep.Summary.Bytes != total {
				b.Fatalf("summary %+v, want %d clean bytes", rep.Summary, total)
			}
		}
	})
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			for _, p := range paths {
				f, err := os.Open(p)
				if err != nil {
					b.Fatal(err)
				}
				h := sha256.New()
				_, err = io.Copy(h, f)
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
				_ = h.Sum(nil)
			}
		}
	})
}
