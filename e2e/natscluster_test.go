package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regwarm/regwarm/e2e/harness"
)

// syncReq is one sync request of the failover test.
type syncReq struct {
	image, want string // the image and the manifest digest its tag names
	seq         uint64
	published   time.Time
	took        time.Duration // until JetStream acknowledged it
	err         error
}

// maxWorkerStall bounds how long a worker may finish nothing while work is
// queued after a node dies. It lies between the 30s nats.go's default pull
// heartbeat check takes to notice a pull request lost with the consumer
// leader, and the 6-16s measured with a 5s pull expiry (which also covers
// ack_wait, 10s, for the jobs whose acks failed).
const maxWorkerStall = 24 * time.Second

// TestNATSClusterFailover runs serve and two workers on a three-node
// JetStream cluster (replicas 3) and kills -9 the node that holds worker
// connections and leads the work stream and the consumer, while 50 sync
// requests are queued and running (20 before the kill, ten a second, then
// 30 after it, one a second). Every request still ends with the right
// digest (redeliveries allowed, none lost, no job completing twice with
// different results), pulls of cached content through serve never fail,
// every worker keeps finishing jobs (no stall over maxWorkerStall), and the
// numbers are logged in one line starting "failover:".
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
			layer := pushBlobHTTP(t, up.URL(), repo, harness.RandomBytes(uint64(1300+10*r+tag), layerSize))
			want[fmt.Sprintf("hub/%s:v%d", repo, tag)] = pushManifestHTTP(t, up.URL(), repo, fmt.Sprintf("v%d", tag), layer, layerSize)
		}
	}
	const pullRepo = "e2e/fo-pull"
	pullLayer := pushBlobHTTP(t, up.URL(), pullRepo, harness.RandomBytes(1399, 64<<10))
	pullManifest := pushManifestHTTP(t, up.URL(), pullRepo, "v1", pullLayer, 64<<10)
	th := startThrottle(t, up, layerSize)

	cfg := clusterConfig(cl.URL(), th.URL)
	rw := harness.StartRegwarm(t, "serve", cfg)
	// nats-server 2.9 may leave concurrent requests on a clustered stream
	// that is being created unanswered (nats-server#3677); regwarm's setup
	// then waits out its 10s timeout. Let serve set everything up alone.
	harness.Eventually(t, 30*time.Second, "serve sets up the work stream, consumer and lease bucket", func() error {
		if !strings.Contains(rw.Log(), `msg="nats ready"`) {
			return errors.New(`no "nats ready" in serve's log`)
		}
		return nil
	})
	workers := startWorkers(t, cfg, rw.DataDir, 2)
	results := watchCluster(t, cl)
	js := harness.JetStream(t, cl.URL())

	// Warm the puller's image through serve; it is pulled all along.
	if err := pullOnce(&http.Client{Timeout: 30 * time.Second}, rw, pullRepo, pullManifest, pullLayer); err != nil {
		t.Fatalf("warming pull: %v", err)
	}
	upPulls := up.CountRequests("GET", "/v2/"+pullRepo+"/manifests/v1")
	var killMu sync.Mutex
	var killed time.Time
	killTime := func() time.Time { killMu.Lock(); defer killMu.Unlock(); return killed }
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	pl := &puller{}
	done := &doneWatch{grew: map[string][]time.Time{}, value: map[string]float64{}}
	wg.Add(2)
	go func() { defer wg.Done(); pl.run(ctx, rw, pullRepo, pullManifest, pullLayer, killTime) }()
	go func() { defer wg.Done(); done.run(ctx, workers) }()

	// The victim holds the most worker connections, and is made to lead
	// the work stream and the consumer.
	victim := clusterRoles(t, cl).victim(cl)
	if r := leadOn(t, harness.NATSConn(t, cl.URL()), cl, victim, 15*time.Second); r.stream != victim.ServerName || r.consumer != victim.ServerName {
		t.Logf("could not move leadership to %s: stream leader %s, consumer leader %s", victim.ServerName, r.stream, r.consumer)
	}
	t.Logf("setup took %.1fs", time.Since(start).Seconds())

	const total, killAt = 50, 20
	reqs := make([]syncReq, total)
	var roles nodeRoles
	for i := range reqs {
		if i == killAt {
			roles = clusterRoles(t, cl)
			victim.Kill()
			killMu.Lock()
			killed = time.Now()
			killMu.Unlock()
			t.Logf("killed %s (pid %d) at %s: worker connections (pids) %v, meta leader %s, stream leader %s, consumer leader %s",
				victim.ServerName, victim.Pid(), killed.UTC().Format("15:04:05.000"), roles.workers, roles.meta, roles.stream, roles.consumer)
		}
		img := fmt.Sprintf("hub/e2e/fo-%d:v%d", i%10, i/10%3+1)
		r := &reqs[i]
		r.image, r.want, r.published = img, want[img], time.Now()
		r.seq, r.err = publishSync(js, i, img)
		r.took = time.Since(r.published)
		if r.err != nil {
			t.Errorf("request %d (%s): not queued: %v", i, img, r.err)
		}
		if i < killAt {
			time.Sleep(100 * time.Millisecond)
		} else {
			time.Sleep(time.Second)
		}
	}
	lastPublished := reqs[total-1].published

	// Wait until every queued request has a result, up to 20s after the
	// last one was queued.
	complete := func(res []clusterResult) bool {
		return slices.ContainsFunc(res, func(c clusterResult) bool { return c.Error == "" })
	}
	for deadline := lastPublished.Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		got := results.bySeq()
		if !slices.ContainsFunc(reqs, func(r syncReq) bool { return r.err == nil && !complete(got[r.seq]) }) {
			break
		}
	}
	stop()
	wg.Wait()

	// Tally. A delivery is (seq, deliveries); its result may come twice
	// (event and reply), which counts once.
	got := results.bySeq()
	var completed, failed, lost, redelivered, diverging, wrong int
	var recover, recoverNew, maxPublish time.Duration
	var doneAfterKill []time.Time
	for i, r := range reqs {
		maxPublish = max(maxPublish, r.took)
		if r.err != nil {
			continue
		}
		deliveries := map[uint64]bool{}
		digests := map[string]bool{}
		for _, c := range got[r.seq] {
			if c.Subject != fmt.Sprintf("%s.%d", failoverReply, i) && !strings.HasPrefix(c.Subject, "regwarm.events.sync.") {
				t.Errorf("request %d (seq %d): result on the wrong reply subject %s", i, r.seq, c.Subject)
			}
			deliveries[c.Deliveries] = true
			if c.Error != "" {
				t.Errorf("request %d (%s, seq %d): failed: %v", i, r.image, r.seq, c.syncEvent)
				continue
			}
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
				if d := c.At.Sub(killed); r.published.After(killed) && (recoverNew == 0 || d < recoverNew) {
					recoverNew = d
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
		case complete(got[r.seq]):
			completed++
		case len(got[r.seq]) > 0:
			failed++
		default:
			lost++
			t.Errorf("request %d (%s, seq %d, queued %.2fs after the kill): no result", i, r.image, r.seq, r.published.Sub(killed).Seconds())
		}
	}
	// The longest time after the kill in which no sync completed at all.
	var maxGap time.Duration
	slices.SortFunc(doneAfterKill, time.Time.Compare)
	prev := killed
	for _, at := range doneAfterKill {
		maxGap = max(maxGap, at.Sub(prev))
		prev = at
	}
	// Per worker: the longest time it finished nothing while requests
	// were still being queued.
	var stalls []string
	stalled := map[string]time.Duration{}
	for _, w := range workers {
		s := done.stall(w.Name, killed, lastPublished)
		stalled[w.Name] = s
		stalls = append(stalls, fmt.Sprintf("%s@%s:%.1fs", w.Name, roles.nodeOf(w.Pid()), s.Seconds()))
	}
	pl.mu.Lock()
	pulls, pullFailures := pl.pulls, slices.Clone(pl.failures)
	pl.mu.Unlock()
	t.Logf("failover: requested=%d completed=%d failed=%d redelivered=%d lost=%d duplicates_diverging=%d wrong_digest=%d "+
		"recover=%.2fs recover_new=%.2fs max_gap=%.2fs worker_stall=%s max_publish=%.2fs pull_failures=%d/%d "+
		"killed=%s(workers=%d consumer_leader=%t stream_leader=%t meta_leader=%t)",
		total, completed, failed, redelivered, lost, diverging, wrong,
		recover.Seconds(), recoverNew.Seconds(), maxGap.Seconds(), strings.Join(stalls, ","), maxPublish.Seconds(),
		len(pullFailures), pulls, victim.ServerName, len(roles.workers[victim.ServerName]),
		roles.consumer == victim.ServerName, roles.stream == victim.ServerName, roles.meta == victim.ServerName)

	if completed != total {
		t.Errorf("%d of %d sync requests completed (%d failed, %d lost)", completed, total, failed, lost)
	}
	if diverging > 0 {
		t.Errorf("%d jobs completed more than once with different digests", diverging)
	}
	for _, w := range workers {
		if s := stalled[w.Name]; s > maxWorkerStall {
			t.Errorf("%s (connected to %s) finished no job for %.1fs after %s died, while requests kept coming; want at most %s. "+
				"A worker whose pull requests were parked at the dead consumer leader waits for nats.go to miss two heartbeats "+
				"(2 x 15s with the default 30s pull expiry) before it pulls again: see Messages() in daemon/worker.go Run and "+
				`its "work consumer lost" log line`,
				w.Name, roles.nodeOf(w.Pid()), s.Seconds(), victim.ServerName, maxWorkerStall)
		}
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
	if err := harness.Poll(15*time.Second, workDrained(js)); err != nil {
		t.Errorf("after the failover the work queue does not drain: %v", err)
	}
	if t.Failed() {
		for _, w := range workers {
			t.Logf("%s (pid %d) warnings and consumer events:\n%s", w.Name, w.Pid(), noteworthy(w.Log(), 40))
		}
	}
	// The killed node comes back with its store and rejoins.
	back := time.Now()
	victim.Start()
	cl.WaitMetaLeader(20 * time.Second)
	t.Logf("%s rejoined in %.1fs; the test took %.1fs", victim.ServerName, time.Since(back).Seconds(), time.Since(start).Seconds())
}

// noteworthy returns the last n lines of a regwarm log that are warnings,
// errors, or about the work consumer and the NATS connection.
func noteworthy(log string, n int) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") ||
			strings.Contains(l, "worker consuming") || strings.Contains(l, "msg=\"nats ") {
			out = append(out, "    "+l)
		}
	}
	return strings.Join(out[max(len(out)-n, 0):], "\n")
}
