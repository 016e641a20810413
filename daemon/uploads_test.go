package daemon

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regwarm/regwarm/internal/metrics"
	"github.com/regwarm/regwarm/internal/store"
)

// TestUploadJanitor: a run discards the idle sessions, counts them, and
// leaves the fresh ones.
func TestUploadJanitor(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	st, err := store.NewFS(t.TempDir(), store.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	repo := store.Repo{Registry: "local", Name: "app"}
	for range 3 {
		if _, err := st.StartUpload(t.Context(), repo, store.StartUploadOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(2 * time.Hour)
	fresh, err := st.StartUpload(t.Context(), repo, store.StartUploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{})
	j := &uploadJanitor{store: st, expiry: time.Hour, now: clock, log: slog.New(slog.DiscardHandler), metrics: m}
	j.once(t.Context())
	if got := testutil.ToFloat64(m.UploadsExpired); got != 3 {
		t.Errorf("regwarm_upload_sessions_expired_total = %v, want 3", got)
	}
	if _, err := st.UploadStatus(t.Context(), repo, fresh.ID); err != nil {
		t.Errorf("fresh session: %v", err)
	}
	for _, tc := range []struct{ expiry, want time.Duration }{
		{24 * time.Hour, 10 * time.Minute}, {time.Minute, 6 * time.Second}, {time.Second, time.Second},
	} {
		if got := janitorInterval(tc.expiry); got != tc.want {
			t.Errorf("janitorInterval(%v) = %v, want %v", tc.expiry, got, tc.want)
		}
	}
}
