package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/regwarm/regwarm/e2e/harness"
)

// clusterConfig is workerConfig on a NATS cluster: natsURLs is the
// comma-separated list of nodes, and every JetStream asset has 3 replicas.
func clusterConfig(natsURLs, upURL string) string {
	return natsConfig(fmt.Sprintf("{url: %q, replicas: 3}", natsURLs), upURL)
}

// The test asks for results on failoverReply.<i> with the contract's
// reply header.
const (
	failoverReply = "e2e.failover.reply"
	replyHeader   = "Regwarm-Reply-To"
)

// clusterResult is a sync result seen by the test, with when it arrived.
type clusterResult struct {
	syncEvent
	At time.Time `json:"-"`
}

// resultLog gathers sync results from one connection per cluster node, so
// that losing a node loses no result; the copies are deduplicated.
type resultLog struct {
	*harness.MsgLog[clusterResult]
}

// watchCluster subscribes on every node to the result events and to the
// reply subjects below failoverReply.
func watchCluster(t *testing.T, cl *harness.NATSCluster) resultLog {
	t.Helper()
	l := harness.NewMsgLog(t, "sync result", func(m *nats.Msg, r *clusterResult) {
		setSubject(m, &r.syncEvent)
		r.At = time.Now()
	})
	keep := l.Handler()
	var mu sync.Mutex
	seen := map[string]bool{}
	handle := func(m *nats.Msg) {
		key := m.Subject + "\x00" + string(m.Data)
		mu.Lock()
		dup := seen[key]
		seen[key] = true
		mu.Unlock()
		if !dup {
			keep(m)
		}
	}
	for _, n := range cl.Nodes {
		nc := harness.NATSConn(t, n.URL())
		for _, subj := range []string{"regwarm.events.sync.>", failoverReply + ".>"} {
			if _, err := nc.Subscribe(subj, handle); err != nil {
				t.Fatalf("subscribe to %s on %s: %v", subj, n.ServerName, err)
			}
		}
		if err := nc.Flush(); err != nil {
			t.Fatalf("subscribe on %s: %v", n.ServerName, err)
		}
	}
	return resultLog{l}
}

// bySeq returns the results so far by stream sequence.
func (l resultLog) bySeq() map[uint64][]clusterResult {
	m := map[uint64][]clusterResult{}
	for _, r := range l.All() {
		m[r.Seq] = append(m[r.Seq], r)
	}
	return m
}

// publishSync queues image with a reply subject and a message id, retrying
// for up to 30s: while the cluster elects new leaders publishes fail or
// time out, and the id makes a retry of a stored message a duplicate.
func publishSync(js jetstream.JetStream, i int, image string) (uint64, error) {
	msg := &nats.Msg{Subject: syncSubject, Data: []byte(image), Header: nats.Header{}}
	msg.Header.Set(replyHeader, fmt.Sprintf("%s.%d", failoverReply, i))
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(fmt.Sprintf("failover-%d", i)))
		cancel()
		if err == nil {
			return ack.Sequence, nil
		}
		if time.Now().After(deadline) {
			return 0, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nodeRoles says which node leads the JetStream meta group, the work
// stream and the workers' consumer, and which worker processes (by pid)
// each node holds a connection of.
type nodeRoles struct {
	meta, stream, consumer string
	workers                map[string][]int
}

// clusterRoles asks every running node's /jsz and /connz.
func clusterRoles(t *testing.T, cl *harness.NATSCluster) nodeRoles {
	t.Helper()
	r := nodeRoles{workers: map[string][]int{}}
	for _, n := range cl.Nodes {
		if exited, _ := n.Exited(); exited {
			continue
		}
		var jsz harness.JSZ
		if err := n.Monitor("jsz", &jsz); err != nil {
			t.Fatalf("jsz: %v", err)
		}
		if jsz.MetaCluster.Leader != "" {
			r.meta = jsz.MetaCluster.Leader
		}
		if s, c := jsz.Leaders(workStream, workConsumer); s != "" || c != "" {
			r.stream, r.consumer = s, c
		}
		var connz harness.Connz
		if err := n.Monitor("connz", &connz); err != nil {
			t.Fatalf("connz: %v", err)
		}
		for _, c := range connz.Connections {
			// regwarm names its connections "regwarm <mode>/<host>/<pid>".
			if rest, ok := strings.CutPrefix(c.Name, "regwarm worker/"); ok {
				pid, _ := strconv.Atoi(rest[strings.LastIndex(rest, "/")+1:])
				r.workers[n.ServerName] = append(r.workers[n.ServerName], pid)
			}
		}
	}
	return r
}

// nodeOf returns the node holding the connection of the process pid.
func (r nodeRoles) nodeOf(pid int) string {
	for n, pids := range r.workers {
		if slices.Contains(pids, pid) {
			return n
		}
	}
	return "?"
}

// victim is the node with the most worker connections; ties go to the
// consumer leader, then the stream leader.
func (r nodeRoles) victim(cl *harness.NATSCluster) *harness.NATS {
	score := func(n *harness.NATS) int {
		s := 4 * len(r.workers[n.ServerName])
		if n.ServerName == r.consumer {
			s += 2
		}
		if n.ServerName == r.stream {
			s++
		}
		return s
	}
	best := cl.Nodes[0]
	for _, n := range cl.Nodes[1:] {
		if score(n) > score(best) {
			best = n
		}
	}
	return best
}

// leadOn asks the leaders of the work stream and of the workers' consumer
// to step down until node leads both (best effort, for up to timeout), so
// that killing node takes the worst case down with it.
func leadOn(t *testing.T, nc *nats.Conn, cl *harness.NATSCluster, node *harness.NATS, timeout time.Duration) nodeRoles {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := clusterRoles(t, cl)
		if (r.stream == node.ServerName && r.consumer == node.ServerName) || time.Now().After(deadline) {
			return r
		}
		if r.stream == "" || r.consumer == "" {
			time.Sleep(100 * time.Millisecond) // an election is under way
			continue
		}
		subj := "$JS.API.STREAM.LEADER.STEPDOWN." + workStream
		if r.stream == node.ServerName {
			subj = "$JS.API.CONSUMER.LEADER.STEPDOWN." + workStream + "." + workConsumer
		}
		if _, err := nc.Request(subj, nil, 5*time.Second); err != nil {
			t.Logf("%s: %v", subj, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// doneWatch polls each worker's regwarm_sync_jobs_total{result="done"} and
// keeps the times at which it grew.
type doneWatch struct {
	mu    sync.Mutex
	grew  map[string][]time.Time
	value map[string]float64
}

func (d *doneWatch) run(ctx context.Context, workers []*harness.Worker) {
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, w := range workers {
			m, err := harness.FetchMetrics(client, w.MetricsAddr)
			if err != nil {
				continue
			}
			v := m.Value("regwarm_sync_jobs_total", "result", "done")
			d.mu.Lock()
			if old, ok := d.value[w.Name]; ok && v > old {
				d.grew[w.Name] = append(d.grew[w.Name], time.Now())
			}
			d.value[w.Name] = v
			d.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// stall returns the longest time within [from, to] in which worker
// finished no sync job.
func (d *doneWatch) stall(worker string, from, to time.Time) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	var longest time.Duration
	prev := from
	for _, at := range append(slices.Clone(d.grew[worker]), to) {
		if at.Before(from) {
			continue
		}
		if at.After(to) {
			at = to
		}
		longest = max(longest, at.Sub(prev))
		prev = at
	}
	return longest
}

// puller GETs a cached manifest and blob through serve every 100ms and
// keeps the failures.
type puller struct {
	mu       sync.Mutex
	pulls    int
	failures []string
}

func (p *puller) run(ctx context.Context, rw *harness.Regwarm, repo, manifest, blob string, kill func() time.Time) {
	client := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := pullOnce(client, rw, repo, manifest, blob)
		p.mu.Lock()
		p.pulls++
		if err != nil {
			when := "before the kill"
			if k := kill(); !k.IsZero() {
				when = fmt.Sprintf("%.2fs after the kill", time.Since(k).Seconds())
			}
			p.failures = append(p.failures, when+": "+err.Error())
		}
		p.mu.Unlock()
	}
}

// pullOnce GETs repo:v1, which must be manifest, and blob through serve.
func pullOnce(client *http.Client, rw *harness.Regwarm, repo, manifest, blob string) error {
	resp, err := send(client, http.MethodGet, rw.URL()+"/v2/hub/"+repo+"/manifests/v1", harness.MediaTypeManifest)
	if err != nil {
		return err
	}
	if d := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != http.StatusOK || d != manifest {
		return fmt.Errorf("GET manifest: status %d, digest %q", resp.StatusCode, d)
	}
	got, _, err := getBlobHTTP(client, rw.URL(), "hub/"+repo, blob)
	if err != nil {
		return err
	}
	if got != blob {
		return fmt.Errorf("GET blob: content hashes to %s", got)
	}
	return nil
}
