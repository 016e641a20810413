package daemon

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regwarm/regwarm/jobs"
)

// earlyBucket is the shortest time between two early gc runs across the
// cluster: each bucket of this length is claimed once.
const earlyBucket = 5 * time.Minute

// Early gc triggers, as regwarm_gc_early_runs_total names them.
const (
	triggerBudget    = "budget"
	triggerWatermark = "watermark"
)

// earlyGC starts a gc run before its schedule when a registry passes its
// budget or the disk its watermark: at most one per earlyBucket across
// the cluster (a lease claim), never two at once in the process, and not
// again for a registry still over budget with nothing more to remove
// (its bytes after the last run are its floor).
type earlyGC struct {
	sch     *scheduler
	running atomic.Bool
	mu      sync.Mutex
	floor   map[string]int64 // registry: bytes after the last early run
}

// overBudget reports a registry's measured bytes against its budget.
func (e *earlyGC) overBudget(ctx context.Context, registry string, bytes, budget int64) {
	if e == nil || budget <= 0 || bytes <= budget {
		return
	}
	e.mu.Lock()
	floor := e.floor[registry]
	e.mu.Unlock()
	if bytes <= floor {
		return // nothing new since a run left it over budget
	}
	e.start(ctx, triggerBudget)
}

// lowDisk reports free bytes below the watermark.
func (e *earlyGC) lowDisk(ctx context.Context) {
	if e != nil {
		e.start(ctx, triggerWatermark)
	}
}

// start runs gc in the background if this worker wins the current bucket.
func (e *earlyGC) start(ctx context.Context, trigger string) {
	if !e.running.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer e.running.Store(false)
		leases := e.sch.bus.leaseService()
		if leases == nil {
			return
		}
		key := "job." + jobs.JobGC + ".early." + strconv.FormatInt(e.sch.now().Truncate(earlyBucket).Unix(), 10)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		won, err := leases.Claim(cctx, key)
		cancel()
		if err != nil || !won {
			return
		}
		e.sch.log.Info("gc starts early", "job", jobs.JobGC, "trigger", trigger)
		e.sch.metrics.GCEarlyRuns.WithLabelValues(trigger).Inc()
		ev := e.sch.run(ctx, jobs.JobGC, true)
		if ev.GC != nil {
			e.mu.Lock()
			if e.floor == nil {
				e.floor = map[string]int64{}
			}
			for reg, b := range ev.GC.ByRegistry {
				e.floor[reg] = b.BytesAfter
			}
			e.mu.Unlock()
		}
	}()
}
