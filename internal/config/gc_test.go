package config

import (
	"testing"
	"time"
)

// TestGCDefaults: jobs.gc runs daily at 04:00 with a 1h delay unless the
// file says otherwise; an explicit delay of 0 and an empty schedule stay.
func TestGCDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		yaml     string
		schedule string
		delay    time.Duration
	}{
		{"version: 1\n", "0 4 * * *", time.Hour},
		{"version: 1\njobs: {gc: {delay: 0s, schedule: \"\"}}\n", "", 0},
		{"version: 1\njobs: {gc: {delay: 10m, dry_run: true, disk_watermark: 5GiB}}\n", "0 4 * * *", 10 * time.Minute},
	}
	for _, tc := range tests {
		cfg, err := Parse([]byte(tc.yaml))
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if g := cfg.Jobs.GC; g.Schedule != tc.schedule || g.Delay.D() != tc.delay {
			t.Errorf("%q: schedule %q delay %v, want %q %v", tc.yaml, g.Schedule, g.Delay, tc.schedule, tc.delay)
		}
	}
	if _, err := Parse([]byte("version: 1\njobs: {gc: {delay: 300}}\n")); err == nil {
		t.Error("a delay without unit was accepted")
	}
}
