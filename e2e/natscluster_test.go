package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
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
	return fmt.Sprintf(`version: 1
data_dir: "{{.DataDir}}"
log: {level: debug, format: text}
serve: {listen: "{{.Addr}}"}
metrics: {listen: "{{.MetricsAddr}}"}
nats: {url: %q, replicas: 3}
worker: {concurrency: 4, ack_wait: 10s}
registries:
  - {name: hub, default: true, connectors: [up], tag_ttl: 5m}
connectors:
  - {name: up, url: %q, host: lab.local}
`, natsURLs, upURL)
}

// failoverReply is the subject prefix the test asks results on, with the
// contract's reply header.
const (
	failoverReply = "e2e.failover.reply"
	replyHeader   = "Regwarm-Reply-To"
)

// clusterResult is a sync result seen by the test, with when it arrived.
type clusterResult struct {
	syncEvent
	At time.Time
}

// resultLog gathers sync results from one connection per cluster node, so
// that losing a node loses no result; the copies are deduplicated.
type resultLog struct {
	mu      sync.Mutex
	seen    map[string]bool
	results []clusterResult
	bad     []string
}

// watchCluster subscribes on every node to the result events and to the
// reply subjects below failoverReply.
func watchCluster(t *testing.T, cl *harness.NATSCluster) *resultLog {
	t.Helper()
	l := &resultLog{seen: map[string]bool{}}
	handle := func(m *nats.Msg) {
		l.mu.Lock()
		defer l.mu.Unlock()
		key := m.Subject + "\x00" + string(m.Data)
		if l.seen[key] {
			return
		}
		l.seen[key] = true
		var e syncEvent
		if err := json.Unmarshal(m.Data, &e); err != nil {
			l.bad = append(l.bad, fmt.Sprintf("%s: %v: %q", m.Subject, err, m.Data))
			return
		}
		e.Subject = m.Subject
		l.results = append(l.results, clusterResult{syncEvent: e, At: time.Now()})
	}
	for _, n := range cl.Nodes {
		nc := natsConn(t, n.URL())
		for _, subj := range []string{"regwarm.events.sync.>", failoverReply + ".>"} {
			if _, err := nc.Subscribe(subj, handle); err != nil {
				t.Fatalf("subscribe to %s on %s: %v", subj, n.ServerName, err)
			}
		}
		if err := nc.Flush(); err != nil {
			t.Fatalf("subscribe on %s: %v", n.ServerName, err)
		}
	}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, b := range l.bad {
			t.Errorf("undecodable sync result %s", b)
		}
	})
	return l
}

func (l *resultLog) all() []clusterResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.results)
}

// syncReq is one sync request of the failover test.
type syncReq struct {
	image, want string // the image and the manifest digest its tag names
	seq         uint64
	published   time.Time
	took        time.Duration // until JetStream acknowledged it
	err         error
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

// nodeRoles describes, from the surviving nodes' view, which node leads
// the JetStream meta group, the work stream and the workers' consumer, and
// how many worker connections each node holds.
type nodeRoles struct {
	meta, stream, consumer string
	workers                map[string]int
}

func clusterRoles(t *testing.T, cl *harness.NATSCluster) nodeRoles {
	t.Helper()
	r := nodeRoles{workers: map[string]int{}}
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
			if strings.HasPrefix(c.Name, "regwarm worker/") {
				r.workers[n.ServerName]++
			}
		}
	}
	return r
}

// victim is the node with the most worker connections; ties go to the
// consumer leader, then the stream leader.
func (r nodeRoles) victim(cl *harness.NATSCluster) *harness.NATS {
	score := func(n *harness.NATS) int {
		s := 4 * r.workers[n.ServerName]
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
// that killing node takes the worst case down with it. It returns the
// roles at the end.
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

// puller GETs a cached manifest and blob through serve every 100ms and
// counts the failures.
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
	req, _ := http.NewRequest(http.MethodGet, rw.URL()+"/v2/hub/"+repo+"/manifests/v1", nil)
	req.Header.Set("Accept", harness.MediaTypeManifest)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if d := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != http.StatusOK || d != manifest {
		return fmt.Errorf("GET manifest: status %d, digest %q", resp.StatusCode, d)
	}
	got, _, err := getBlobHTTPWith(client, rw.URL(), "hub/"+repo, blob)
	if err == nil && got != blob {
		err = fmt.Errorf("GET blob %s: content hashes to %s", blob, got)
	}
	return err
}

// getBlobHTTPWith is getBlobHTTP with a client that has a timeout.
func getBlobHTTPWith(client *http.Client, base, repo, d string) (string, int64, error) {
	resp, err := client.Get(base + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("GET blob %s: status %d", d, resp.StatusCode)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, err
}

// TestNATSClusterFailover runs serve and two workers on a three-node
// JetStream cluster (replicas 3) and kills -9 the node the workers are
// connected to while 50 sync requests are queued and running. Every
// request still ends with exactly the right digest (redeliveries allowed,
// none lost, no job completing twice with different results), pulls of
// cached content through serve never fail, and the numbers (redeliveries,
// time to the first completed sync after the kill) are logged in one line.
func TestNATSClusterFailover(t *testing.T) {
	t.Parallel()
	requireRegwarm(t)
	start := time.Now()
	cl := harness.StartNATSCluster(t, 3)
	up := harness.StartDockerRegistry(t, harness.UpstreamOptions{})

	// Ten repositories with three tags each; every tag has its own 256 KiB
	// layer, which the throttle sends in about a second.
	const layerSize = 256 << 10
	want := map[string]string{}
	for r := range 10 {
		repo := fmt.Sprintf("e2e/fo-%d", r)
		for tag := 1; tag <= 3; tag++ {
			layer := pushBlobHTTP(t, up.URL(), repo, randomBytes(uint64(1300+10*r+tag), layerSize))
			want[fmt.Sprintf("hub/%s:v%d", repo, tag)] = pushManifestHTTP(t, up.URL(), repo, fmt.Sprintf("v%d", tag), layer, layerSize)
		}
	}
	const pullRepo = "e2e/fo-pull"
	pullLayer := pushBlobHTTP(t, up.URL(), pullRepo, randomBytes(1399, 64<<10))
	pullManifest := pushManifestHTTP(t, up.URL(), pullRepo, "v1", pullLayer, 64<<10)
	th := startThrottle(t, up, layerSize)

	cfg := clusterConfig(cl.URL(), th.URL)
	rw := harness.StartRegwarm(t, "serve", cfg)
	js := jetStream(t, cl.URL())
	// nats-server 2.9 leaves parallel creations of one clustered stream
	// unanswered (nats-server#3677): regwarm's setup then retries after its
	// 10s timeout, per asset. Let serve create everything alone first.
	harness.Eventually(t, 30*time.Second, "serve sets up the work stream, consumer and lease bucket", func() error {
		if !strings.Contains(rw.Log(), `msg="nats ready"`) {
			return errors.New(`no "nats ready" in serve's log`)
		}
		return nil
	})
	t.Logf("TIMING serve setup %.1fs", time.Since(start).Seconds())
	workers := startWorkers(t, cfg, rw.DataDir, 2)
	t.Logf("TIMING workers %.1fs", time.Since(start).Seconds())
	for _, w := range workers {
		for _, l := range strings.Split(w.Log(), "\n") {
			if strings.Contains(l, "nats") {
				t.Logf("%s: %s", w.Name, l)
			}
		}
	}
	for _, l := range strings.Split(rw.Log(), "\n") {
		if strings.Contains(l, "nats") {
			t.Logf("serve: %s", l)
		}
	}
	results := watchCluster(t, cl)

	// Warm the puller's image through serve, then pull it all along.
	if err := pullOnce(&http.Client{Timeout: 30 * time.Second}, rw, pullRepo, pullManifest, pullLayer); err != nil {
		t.Fatalf("warming pull: %v", err)
	}
	upPulls := up.CountRequests("GET", "/v2/"+pullRepo+"/manifests/v1")
	var killMu sync.Mutex
	var killedAt time.Time
	killTime := func() time.Time { killMu.Lock(); defer killMu.Unlock(); return killedAt }
	pl := &puller{}
	pctx, stopPulls := context.WithCancel(context.Background())
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() { defer pwg.Done(); pl.run(pctx, rw, pullRepo, pullManifest, pullLayer, killTime) }()
	defer func() { stopPulls(); pwg.Wait() }()

	// The victim holds the most worker connections, and is made to lead
	// the work stream and the consumer.
	victim := clusterRoles(t, cl).victim(cl)
	t.Logf("TIMING before leadOn %.1fs", time.Since(start).Seconds())
	if r := leadOn(t, natsConn(t, cl.URL()), cl, victim, 15*time.Second); r.stream != victim.ServerName || r.consumer != victim.ServerName {
		t.Logf("could not move leadership to %s: stream leader %s, consumer leader %s", victim.ServerName, r.stream, r.consumer)
	}
	t.Logf("setup took %.1fs", time.Since(start).Seconds())

	// 50 requests over the 30 tags, ten a second; the victim is killed
	// just before request killAt.
	const total, killAt = 50, 20
	reqs := make([]syncReq, total)
	var roles nodeRoles
	for i := range reqs {
		if i == killAt {
			roles = clusterRoles(t, cl)
			victim.Kill()
			killMu.Lock()
			killedAt = time.Now()
			killMu.Unlock()
			t.Logf("killed %s (pid %d): worker connections %v, meta leader %s, stream leader %s, consumer leader %s",
				victim.ServerName, victim.Pid(), roles.workers, roles.meta, roles.stream, roles.consumer)
		}
		img := fmt.Sprintf("hub/e2e/fo-%d:v%d", i%10, i/10%3+1)
		r := &reqs[i]
		r.image, r.want, r.published = img, want[img], time.Now()
		r.seq, r.err = publishSync(js, i, img)
		r.took = time.Since(r.published)
		if r.err != nil {
			t.Errorf("request %d (%s): not queued: %v", i, img, r.err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	killed := killTime()

	// Wait until every queued request has a result, up to 45s after the kill.
	bySeq := func() map[uint64][]clusterResult {
		m := map[uint64][]clusterResult{}
		for _, res := range results.all() {
			m[res.Seq] = append(m[res.Seq], res)
		}
		return m
	}
	deadline := killed.Add(45 * time.Second)
	for time.Now().Before(deadline) {
		got := bySeq()
		missing := 0
		for _, r := range reqs {
			if r.err == nil && !slices.ContainsFunc(got[r.seq], func(c clusterResult) bool { return c.Error == "" }) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopPulls()
	pwg.Wait()

	// Tally. A delivery is (seq, deliveries); its result may come twice
	// (event and reply), which counts once.
	got := bySeq()
	var completed, failed, lost, redelivered, diverging, wrong int
	var doneAfterKill []time.Time
	var recover, recoverNew time.Duration
	var maxPublish time.Duration
	for i, r := range reqs {
		maxPublish = max(maxPublish, r.took)
		if r.err != nil {
			continue
		}
		res := got[r.seq]
		deliveries := map[uint64]string{}
		digests := map[string]bool{}
		ok := false
		for _, c := range res {
			if c.Subject == fmt.Sprintf("%s.%d", failoverReply, i) || strings.HasPrefix(c.Subject, "regwarm.events.sync.") {
				deliveries[c.Deliveries] = c.Error
			} else {
				t.Errorf("request %d (seq %d): result on the wrong reply subject %s", i, r.seq, c.Subject)
			}
			if c.Error != "" {
				t.Errorf("request %d (%s, seq %d): failed: %v", i, r.image, r.seq, c.syncEvent)
				continue
			}
			ok = true
			digests[c.Digest] = true
			if c.Digest != r.want {
				wrong++
				t.Errorf("request %d (%s, seq %d): synced %s, want %s", i, r.image, r.seq, c.Digest, r.want)
			}
			if c.At.After(killed) {
				doneAfterKill = append(doneAfterKill, c.At)
				if d := c.At.Sub(killed); recover == 0 || d < recover {
					recover = d
				}
				if r.published.After(killed) {
					if d := c.At.Sub(killed); recoverNew == 0 || d < recoverNew {
						recoverNew = d
					}
				}
			}
		}
		for d := range deliveries {
			if d > 1 {
				redelivered++
			}
		}
		if len(digests) > 1 {
			diverging++
		}
		switch {
		case ok:
			completed++
		case len(res) > 0:
			failed++
		default:
			lost++
			t.Errorf("request %d (%s, seq %d, queued %.2fs after the kill): no result", i, r.image, r.seq, r.published.Sub(killed).Seconds())
		}
	}
	// The longest time without any completed sync after the kill.
	var maxGap time.Duration
	slices.SortFunc(doneAfterKill, func(a, b time.Time) int { return a.Compare(b) })
	prev := killed
	for _, at := range doneAfterKill {
		maxGap = max(maxGap, at.Sub(prev))
		prev = at
	}
	pl.mu.Lock()
	pulls, pullFailures := pl.pulls, slices.Clone(pl.failures)
	pl.mu.Unlock()
	t.Logf("failover: requested=%d completed=%d failed=%d redelivered=%d lost=%d duplicates_diverging=%d wrong_digest=%d "+
		"recover=%.2fs recover_new=%.2fs max_gap=%.2fs max_publish=%.2fs pull_failures=%d/%d killed=%s(workers=%d consumer_leader=%t stream_leader=%t meta_leader=%t)",
		total, completed, failed, redelivered, lost, diverging, wrong, recover.Seconds(), recoverNew.Seconds(), maxGap.Seconds(), maxPublish.Seconds(),
		len(pullFailures), pulls, victim.ServerName, roles.workers[victim.ServerName],
		roles.consumer == victim.ServerName, roles.stream == victim.ServerName, roles.meta == victim.ServerName)

	if completed != total {
		t.Errorf("%d of %d sync requests completed (%d failed, %d lost)", completed, total, failed, lost)
	}
	if diverging > 0 {
		t.Errorf("%d jobs completed more than once with different digests", diverging)
	}
	for i, f := range pullFailures {
		if i == 10 {
			t.Errorf("… %d more pull failures", len(pullFailures)-10)
			break
		}
		t.Errorf("pull of cached content through serve failed %s", f)
	}
	if n := up.CountRequests("GET", "/v2/"+pullRepo+"/manifests/v1"); n != upPulls {
		t.Errorf("the cached manifest was fetched from the upstream %d more times; serve should answer it locally", n-upPulls)
	}
	for _, w := range workers {
		if exited, err := w.Exited(); exited {
			t.Errorf("%s exited: %v", w.Name, err)
		}
	}
	if err := pollUntilDrained(js, 15*time.Second); err != nil {
		t.Errorf("after the failover the work queue does not drain: %v", err)
	}
	// The killed node comes back with its store and rejoins.
	back := time.Now()
	victim.Start()
	cl.WaitMetaLeader(20 * time.Second)
	t.Logf("%s rejoined in %.1fs", victim.ServerName, time.Since(back).Seconds())
	t.Logf("test took %.1fs", time.Since(start).Seconds())
	t.Logf("KILLED AT %s", killed.UTC().Format("15:04:05.000"))
	for _, w := range workers {
		for _, l := range strings.Split(w.Log(), "\n") {
			if strings.Contains(l, "WARN") || strings.Contains(l, "ERROR") || strings.Contains(l, "nats") || strings.Contains(l, "sync done") {
				t.Logf("%s: %s", w.Name, l)
			}
		}
	}
}

// pollUntilDrained waits until the work stream is empty.
func pollUntilDrained(js jetstream.JetStream, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := workDrained(js)()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
