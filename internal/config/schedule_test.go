package config

import (
	"testing"
	"time"
)

func TestParseSchedule(t *testing.T) {
	t.Parallel()
	for _, spec := range []string{"0 3 * * *", "@weekly", "@daily", "*/30 * * * *", "CRON_TZ=Europe/Paris 0 3 * * *", "@every 5s"} {
		if _, _, err := ParseSchedule(spec); err != nil {
			t.Errorf("%q: %v", spec, err)
		}
	}
	for _, spec := range []string{"61 * * * *", "@sometimes", "* * *", "@every 10ms", "@every x"} {
		if _, _, err := ParseSchedule(spec); err == nil {
			t.Errorf("%q accepted", spec)
		}
	}
	s, _, _ := ParseSchedule("@every 3s")
	next := s.Next(time.Unix(100, 500))
	if next.Unix()%3 != 0 || !next.After(time.Unix(100, 500)) {
		t.Errorf("@every 3s not aligned: %v", next)
	}
}
