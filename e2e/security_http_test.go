package e2e

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/regwarm/regwarm/e2e/harness"
)

// Issue 11, findings 5, 6, 9 and 10: the HTTP front door and
// authentication, against the real binary and real clients.

// writeHtpasswd writes bcrypt entries for users (password "<user>-secret").
func writeHtpasswd(t *testing.T, users ...string) string {
	t.Helper()
	var b strings.Builder
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-secret"), 6)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	writeFile(t, path, b.String())
	return path
}

func readFileString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// rawGet sends one request with header pairs and returns the response
// (body read).
func rawGet(t *testing.T, method, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// skopeo/podman/crane/ctr/docker login, push and pull through the token flow; tokens
// carry only the access asked for and allowed; the realm ignores Host;
// repeated failures are throttled.
func TestAuthTokenFlowClients(t *testing.T) {
	requireRegwarm(t)
	ht := writeHtpasswd(t, "ci", "dev")
	rw := harness.StartRegwarm(t, "serve", harness.ConfigHeader+`registries:
  - {name: local, default: true, push: true}
  - {name: other, push: true}
auth:
  htpasswd_file: `+ht+`
  rules:
    - {registry: local, users: [ci], allow: [pull, push, delete]}
    - {registry: local, users: [dev], allow: [pull]}
    - {registry: other, users: [anonymous, "*"], allow: [pull]}
`)
	base := "http://" + rw.Addr
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 11})

	// Anonymous clients may not push; ci logs in and pushes.
	if out, err := harness.TrySkopeo(t, "copy", "--all", "--dest-tls-verify=false", im.OCI(), "docker://"+rw.Addr+"/local/app:v1"); err == nil {
		t.Fatalf("anonymous push succeeded: %s", out)
	}
	harness.Skopeo(t, "login", "--tls-verify=false", "-u", "ci", "-p", "ci-secret", rw.Addr)
	pushImage(t, im, rw.Addr+"/local/app:v1")
	harness.Skopeo(t, "inspect", "--tls-verify=false", "--raw", "docker://"+rw.Addr+"/local/app:v1")

	// dev (pull only) logs in with podman, pulls; a push is refused.
	p := harness.Podman(t)
	p.Run("login", "--tls-verify=false", "-u", "dev", "-p", "dev-secret", rw.Addr)
	p.Run("pull", "--tls-verify=false", "--platform", hostPlatform(), rw.Addr+"/local/app:v1")
	if d := harness.Crane(t, "digest", rw.Addr+"/local/app:v1"); !strings.HasPrefix(d, "sha256:") {
		t.Fatalf("crane digest as dev: %q", d)
	}
	if out, err := harness.TrySkopeo(t, "copy", "--all", "--dest-tls-verify=false", im.OCI(), "docker://"+rw.Addr+"/local/app:v2"); err == nil {
		t.Fatalf("dev pushed: %s", out)
	}
	// containerd asks for its token with an OAuth2 password grant (POST).
	c := harness.StartContainerd(t)
	c.Ctr("images", "pull", "--plain-http", "--user", "dev:dev-secret", rw.Addr+"/local/app:v1")

	// The realm comes from serve.listen, whatever Host the request names.
	res, _ := rawGet(t, "GET", base+"/v2/local/app/tags/list", "Host", "evil.example.net", "X-Forwarded-Proto", "https")
	want := `Bearer realm="http://` + rw.Addr + `/auth/token",service="regwarm"`
	if got := res.Header.Get("WWW-Authenticate"); res.StatusCode != 401 || !strings.HasPrefix(got, want) {
		t.Fatalf("challenge %d %q, want prefix %q", res.StatusCode, got, want)
	}

	// A token for local/app:pull reads local/app, but cannot push it nor
	// read another repository.
	res, body := rawGet(t, "GET", base+"/auth/token?service=regwarm&scope=repository:local/app:pull", "Authorization", basicAuth("ci", "ci-secret"))
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(body), &tok); res.StatusCode != 200 || err != nil || strings.Count(tok.Token, ".") != 2 {
		t.Fatalf("token answer %d %s", res.StatusCode, body)
	}
	bearer := "Bearer " + tok.Token
	if res, body := rawGet(t, "GET", base+"/v2/local/app/tags/list", "Authorization", bearer); res.StatusCode != 200 {
		t.Fatalf("pull with the token: %d %s", res.StatusCode, body)
	}
	if res, body := rawGet(t, "POST", base+"/v2/local/app/blobs/uploads/", "Authorization", bearer); res.StatusCode != 401 ||
		!strings.Contains(res.Header.Get("WWW-Authenticate"), `scope="repository:local/app:pull,push"`) {
		t.Fatalf("push with a pull token: %d %q %s", res.StatusCode, res.Header.Get("WWW-Authenticate"), body)
	}
	if res, body := rawGet(t, "GET", base+"/v2/local/other/tags/list", "Authorization", bearer); res.StatusCode != 401 {
		t.Fatalf("another repository with the token: %d %s", res.StatusCode, body)
	}

	// Guessing dev's password: after 5 failures, 429 with Retry-After
	// even for the right password; ci from the same address still logs in.
	for range 5 {
		if res, _ := rawGet(t, "GET", base+"/auth/token", "Authorization", basicAuth("dev", "guess")); res.StatusCode != 401 {
			t.Fatalf("wrong password: %d", res.StatusCode)
		}
	}
	res, body = rawGet(t, "GET", base+"/auth/token", "Authorization", basicAuth("dev", "dev-secret"))
	if res.StatusCode != 429 || res.Header.Get("Retry-After") == "" || !strings.Contains(body, "TOOMANYREQUESTS") {
		t.Fatalf("throttled login: %d %q %s", res.StatusCode, res.Header.Get("Retry-After"), body)
	}
	harness.Skopeo(t, "login", "--tls-verify=false", "-u", "ci", "-p", "ci-secret", rw.Addr)

	// docker login, pull and push through the token flow.
	d := harness.StartDockerd(t, harness.DockerdOptions{})
	d.Docker("login", "-u", "ci", "-p", "ci-secret", rw.Addr)
	d.Docker("pull", rw.Addr+"/local/app:v1")
	d.Docker("tag", rw.Addr+"/local/app:v1", rw.Addr+"/local/app:docker")
	d.Docker("push", rw.Addr+"/local/app:docker")

	// A user added to the htpasswd file can log in without a restart.
	writeFile(t, ht, readFileString(t, ht)+readFileString(t, writeHtpasswd(t, "ops")))
	// Each try comes from another loopback address, so that the failures
	// before the reload do not get ops throttled.
	try := 0
	harness.Eventually(t, 10*time.Second, "ops logs in after the htpasswd change", func() error {
		try++
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(try))}
		client := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: src}).DialContext}}
		req, _ := http.NewRequest("GET", base+"/v2/", nil)
		req.SetBasicAuth("ops", "ops-secret")
		res, err := client.Do(req)
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("status %d", res.StatusCode)
		}
		return nil
	})

	m := harness.ScrapeMetrics(t, rw.MetricsAddr)
	if m.Value("regwarm_auth_logins_total", "result", "throttled") < 1 || m.Value("regwarm_auth_logins_total", "result", "failed") < 5 {
		t.Fatalf("login metrics: throttled %v failed %v", m.Value("regwarm_auth_logins_total", "result", "throttled"),
			m.Value("regwarm_auth_logins_total", "result", "failed"))
	}
}

// floodConn is one connection of the flood.
type floodConn struct {
	c       net.Conn
	refused atomic.Int32 // the status it was answered with before its body was done
	closed  atomic.Bool
}

// startFloodConn connects from src and sends the head of a 1 MB upload.
func startFloodConn(t *testing.T, src, addr, head string) *floodConn {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("flood connection from %s: %v", src, err)
	}
	fc := &floodConn{c: c}
	_, _ = io.WriteString(c, head)
	go func() {
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			fc.refused.Store(int32(res.StatusCode))
			res.Body.Close()
			c.Close() // as clients do after "Connection: close"
		}
		fc.closed.Store(true)
	}()
	return fc
}

// 600 slow uploads from one address hold at most max_connections_per_client
// connections and are refused past it with 429; a pull from another address
// works meanwhile; stalled bodies and headers are cut by their timeouts.
func TestConnectionFlood(t *testing.T) {
	requireRegwarm(t)
	rw := harness.StartRegwarm(t, "serve", `version: 1
data_dir: "{{.DataDir}}"
log: {level: info, format: text}
serve: {listen: "{{.Addr}}", max_connections_per_client: 100, header_timeout: 2s, body_idle_timeout: 3s}
metrics: {listen: "{{.MetricsAddr}}"}
nats: {embedded: {listen: "{{.NATSAddr}}"}}
registries:
  - {name: local, default: true, push: true}
`)
	im := harness.BuildImage(t, t.TempDir(), harness.ImageOptions{Seed: 12})
	pushImage(t, im, rw.Addr+"/local/app:v1")
	before := harness.ScrapeMetrics(t, rw.MetricsAddr).Value("process_open_fds")

	// The flood comes from 127.0.0.2 (bound explicitly); clients that just
	// dial 127.0.0.1 come from 127.0.0.1.
	upload := "POST /v2/local/flood/blobs/uploads/?digest=sha256:" + strings.Repeat("0", 64) +
		" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
	var flood []*floodConn
	for range 600 {
		flood = append(flood, startFloodConn(t, "127.0.0.2", rw.Addr, upload))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a byte a second on every connection: slow, but progress
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				for _, fc := range flood {
					if !fc.closed.Load() {
						_ = fc.c.SetWriteDeadline(time.Now().Add(time.Second))
						_, _ = fc.c.Write([]byte{'x'})
					}
				}
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
		for _, fc := range flood {
			fc.c.Close()
		}
	})
	// Past the cap connections are refused: answered 429 with an OCI error
	// body while the refusing goroutines keep up, else closed.
	harness.Eventually(t, 20*time.Second, "500 flood connections refused", func() error {
		closed, answered := 0, 0
		for _, fc := range flood {
			if fc.closed.Load() {
				closed++
			}
			if fc.refused.Load() == http.StatusTooManyRequests {
				answered++
			}
		}
		if closed < 500 || answered < 400 {
			return fmt.Errorf("%d refused, %d of them answered 429", closed, answered)
		}
		return nil
	})

	// A pull from 127.0.0.1 goes through while the flood holds its share.
	start := time.Now()
	harness.Skopeo(t, "copy", "--src-tls-verify=false", "docker://"+rw.Addr+"/local/app:v1", "dir:"+filepath.Join(t.TempDir(), "pulled"))
	t.Logf("pull during the flood took %v", time.Since(start))
	alive := 0
	for _, fc := range flood {
		if !fc.closed.Load() {
			alive++
		}
	}
	if alive > 100 {
		t.Fatalf("%d flood connections open, cap 100", alive)
	}

	m := harness.ScrapeMetrics(t, rw.MetricsAddr)
	rejected := m.Value("regwarm_http_connections_rejected_total", "reason", "max_connections_per_client")
	fds := m.Value("process_open_fds")
	t.Logf("open fds %v before, %v during the flood; %v rejected; %v goroutines; %d flood connections alive",
		before, fds, rejected, m.Value("go_goroutines"), alive)
	if rejected < 500 {
		t.Fatalf("regwarm_http_connections_rejected_total{reason=max_connections_per_client} = %v", rejected)
	}
	// Once the refused ones are answered: the 100 held connections and
	// their upload files, not 600 of each.
	harness.Eventually(t, 10*time.Second, "open fds bounded during the flood", func() error {
		m, err := harness.FetchMetrics(http.DefaultClient, rw.MetricsAddr)
		if err != nil {
			return err
		}
		if fds := m.Value("process_open_fds"); fds > before+250 {
			return fmt.Errorf("%v open fds (%v before)", fds, before)
		}
		return nil
	})

	// Stalled bodies (from 127.0.0.3) and stalled headers (127.0.0.4) are
	// cut after body_idle_timeout and header_timeout.
	var stalled []*floodConn
	for range 10 {
		stalled = append(stalled, startFloodConn(t, "127.0.0.3", rw.Addr, upload+"abc"))
		stalled = append(stalled, startFloodConn(t, "127.0.0.4", rw.Addr, "GET /v2/ HTTP/1.1\r\nHost: x\r\n"))
	}
	t.Cleanup(func() {
		for _, fc := range stalled {
			fc.c.Close()
		}
	})
	harness.Eventually(t, 10*time.Second, "stalled connections closed", func() error {
		for i, fc := range stalled {
			if !fc.closed.Load() {
				return fmt.Errorf("stalled connection %d still open", i)
			}
		}
		return nil
	})
	if got := harness.ScrapeMetrics(t, rw.MetricsAddr).Value("regwarm_http_body_timeouts_total"); got < 10 {
		t.Fatalf("regwarm_http_body_timeouts_total = %v", got)
	}
}
