package metrics

import "github.com/prometheus/client_golang/prometheus"

// Reasons a connection is refused, and login results: the bounded label
// values of the Limits collectors.
const (
	ReasonMaxConnections = "max_connections"
	ReasonPerClient      = "max_connections_per_client"
	LoginOK              = "ok"
	LoginFailed          = "failed"
	LoginThrottled       = "throttled"
)

// Limits holds the collectors of the API's connection limits, body
// timeouts and login throttle; it is itself a collector of all of them.
type Limits struct {
	OpenConnections     prometheus.Gauge
	RejectedConnections *prometheus.CounterVec
	BodyTimeouts        prometheus.Counter
	Logins              *prometheus.CounterVec
}

var _ prometheus.Collector = (*Limits)(nil)

func (l *Limits) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.OpenConnections, l.RejectedConnections, l.BodyTimeouts, l.Logins}
}

// Describe describes every collector of l.
func (l *Limits) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range l.collectors() {
		c.Describe(ch)
	}
}

// Collect collects every collector of l.
func (l *Limits) Collect(ch chan<- prometheus.Metric) {
	for _, c := range l.collectors() {
		c.Collect(ch)
	}
}

func newLimits(reg prometheus.Registerer) *Limits {
	l := &Limits{
		OpenConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regwarm_http_connections_open", Help: "Open connections to the registry API.",
		}),
		RejectedConnections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_http_connections_rejected_total", Help: "Connections to the registry API refused by a connection limit, by reason.",
		}, []string{"reason"}),
		BodyTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regwarm_http_body_timeouts_total", Help: "Request bodies abandoned after serve.body_idle_timeout without progress.",
		}),
		Logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regwarm_auth_logins_total", Help: "Password checks by result (ok, failed, throttled: refused without checking).",
		}, []string{"result"}),
	}
	reg.MustRegister(l)
	for _, r := range []string{ReasonMaxConnections, ReasonPerClient} {
		l.RejectedConnections.WithLabelValues(r)
	}
	for _, r := range []string{LoginOK, LoginFailed, LoginThrottled} {
		l.Logins.WithLabelValues(r)
	}
	return l
}
