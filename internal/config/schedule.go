package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// ParseSchedule parses a job schedule the way workers run it: five fields,
// descriptors such as @daily, an optional CRON_TZ= or TZ= prefix, and
// "@every D" (D ≥ 1s, whole seconds) aligned to multiples of D since the
// Unix epoch, so that every worker's ticks fall on the same instants. grain
// is the precision a tick's time is known to: D, or a minute.
func ParseSchedule(spec string) (s cron.Schedule, grain time.Duration, err error) {
	defer func() {
		// The cron parser has panicked on odd input in the past; a config
		// check must not crash on it.
		if r := recover(); r != nil {
			s, grain, err = nil, 0, fmt.Errorf("not a valid cron schedule")
		}
	}()
	if rest, ok := strings.CutPrefix(strings.TrimSpace(spec), "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || d < time.Second || d%time.Second != 0 {
			return nil, 0, fmt.Errorf("@every needs whole seconds, at least 1s: %q", rest)
		}
		return Every{d}, d, nil
	}
	sched, err := cron.ParseStandard(spec)
	return sched, time.Minute, err
}

// Every fires at every multiple of its period since the Unix epoch.
type Every struct{ Period time.Duration }

// Next returns the first multiple of the period after t.
func (e Every) Next(t time.Time) time.Time {
	p := e.Period.Nanoseconds()
	return time.Unix(0, (t.UnixNano()/p+1)*p).In(t.Location())
}

// Nearest returns the multiple of grain nearest to t (since the epoch).
func Nearest(t time.Time, grain time.Duration) time.Time {
	p := grain.Nanoseconds()
	return time.Unix(0, (t.UnixNano()+p/2)/p*p)
}
