package metrics

import "github.com/prometheus/client_golang/prometheus"

// GCKinds and GCReasons are the label values of regwarm_gc_removed_total.
var (
	GCKinds   = []string{"tag", "manifest", "blob"}
	GCReasons = []string{"over-budget", "unpulled", "untagged", "unreferenced"}
)

// newLifecycle creates the collectors of last-pulled tracking and
// per-registry usage.
func (s *Set) newLifecycle(reg prometheus.Registerer, l Labels) {
	s.RegistryBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "regwarm_registry_bytes", Help: "Distinct blobs and manifests linked in each registry, in bytes (as of the last count).",
	}, []string{"registry"})
	s.PullsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "regwarm_pulls_dropped_total", Help: "Client manifest pulls whose last-pulled time was not recorded because the buffer was full.",
	})
	s.PullFlushErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "regwarm_pulls_flush_errors_total", Help: "Failed writes of recorded last-pulled times to the store (retried at the next flush).",
	})
	s.RegistryBudget = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "regwarm_registry_budget_bytes", Help: "Each registry's retention.max_bytes (0: no budget).",
	}, []string{"registry"})
	s.GCRemoved = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regwarm_gc_removed_total", Help: "Tags, manifests and blobs removed by gc, by registry, kind (tag/manifest/blob) and reason (over-budget/unpulled/untagged/unreferenced).",
	}, []string{"registry", "kind", "reason"})
	s.GCFreed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "regwarm_gc_freed_bytes_total", Help: "Bytes of stored content removed by gc.",
	})
	s.GCEarlyRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regwarm_gc_early_runs_total", Help: "gc runs started before their schedule, by trigger (budget: a registry over max_bytes; watermark: low disk space).",
	}, []string{"trigger"})
	reg.MustRegister(s.RegistryBytes, s.RegistryBudget, s.PullsDropped, s.PullFlushErrors, s.GCRemoved, s.GCFreed, s.GCEarlyRuns)
	for _, r := range l.Registries {
		s.RegistryBytes.WithLabelValues(r)
		s.RegistryBudget.WithLabelValues(r).Set(float64(l.Budgets[r]))
		for _, k := range GCKinds {
			for _, reason := range GCReasons {
				s.GCRemoved.WithLabelValues(r, k, reason)
			}
		}
	}
	for _, t := range []string{"budget", "watermark"} {
		s.GCEarlyRuns.WithLabelValues(t)
	}
}
