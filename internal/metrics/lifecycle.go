package metrics

import "github.com/prometheus/client_golang/prometheus"

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
	reg.MustRegister(s.RegistryBytes, s.PullsDropped, s.PullFlushErrors)
	for _, r := range l.Registries {
		s.RegistryBytes.WithLabelValues(r)
	}
}
