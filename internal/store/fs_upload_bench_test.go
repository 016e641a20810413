package store_test

import (
	"fmt"
	"testing"

	"github.com/regwarm/regwarm/internal/store"
)

// BenchmarkStartUploadCapped measures StartUpload with caps while 1,000
// other sessions are open (the cap check reads every session).
func BenchmarkStartUploadCapped(b *testing.B) {
	s, err := store.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		r := store.Repo{Registry: "hub", Name: fmt.Sprintf("repo%d", i%50)}
		if _, err := s.StartUpload(b.Context(), r, store.StartUploadOptions{Owner: fmt.Sprintf("u%d", i%20)}); err != nil {
			b.Fatal(err)
		}
	}
	opts := store.StartUploadOptions{Owner: "bench", MaxPerRepo: 100, MaxPerOwner: 1 << 30}
	b.ResetTimer()
	for b.Loop() {
		st, err := s.StartUpload(b.Context(), repo, opts)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.CancelUpload(b.Context(), repo, st.ID); err != nil {
			b.Fatal(err)
		}
	}
}
