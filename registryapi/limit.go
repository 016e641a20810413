package registryapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/regwarm/regwarm/internal/metrics"
)

// refusers bounds the goroutines that answer refused connections; past it
// a refused connection is closed without an answer. refuseTime bounds how
// long one answer (and draining the request) may take.
const (
	refusers   = 256
	refuseTime = 300 * time.Millisecond
)

// CodeBodyTimeout is the answer to a request whose body made no progress
// for serve.body_idle_timeout.
var CodeBodyTimeout = Code{"BLOB_UPLOAD_INVALID", http.StatusRequestTimeout, "request body timed out"}

// LimitListener wraps the API listener ln: at most total connections are
// open at once, and at most perClient from one client address (IPv6: one
// /64), so that a flood from one address leaves room for everyone else.
// A refused connection is counted and, when answerHTTP (a plain HTTP
// listener), answered 503 (total) or 429 (per client) with an OCI error
// body before it is closed.
func LimitListener(ln net.Listener, total, perClient int, answerHTTP bool, m *metrics.Set) net.Listener {
	return &limitListener{Listener: ln, total: total, perClient: perClient, answer: answerHTTP,
		m: m.Limits, byClient: map[string]int{}, refusing: make(chan struct{}, refusers)}
}

type limitListener struct {
	net.Listener
	total, perClient int
	answer           bool
	m                *metrics.Limits
	refusing         chan struct{}

	mu       sync.Mutex
	open     int
	byClient map[string]int
}

// Accept returns the next connection within the limits.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		client := clientAddr(c.RemoteAddr().String())
		reason := ""
		l.mu.Lock()
		switch {
		case l.open >= l.total:
			reason = metrics.ReasonMaxConnections
		case l.byClient[client] >= l.perClient:
			reason = metrics.ReasonPerClient
		default:
			l.open++
			l.byClient[client]++
		}
		l.mu.Unlock()
		if reason != "" {
			l.m.RejectedConnections.WithLabelValues(reason).Inc()
			l.refuse(c, reason)
			continue
		}
		l.m.OpenConnections.Inc()
		return &limitedConn{Conn: c, release: func() { l.release(client) }}, nil
	}
}

func (l *limitListener) release(client string) {
	l.mu.Lock()
	l.open--
	if l.byClient[client]--; l.byClient[client] <= 0 {
		delete(l.byClient, client)
	}
	l.mu.Unlock()
	l.m.OpenConnections.Dec()
}

// refuse answers and closes a connection over a limit, in the background
// and within refuseTime; the request is drained before the close so that
// the client reads the answer instead of a reset.
func (l *limitListener) refuse(c net.Conn, reason string) {
	if !l.answer {
		c.Close()
		return
	}
	select {
	case l.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-l.refusing }()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(refuseTime))
		code, msg := CodeUnavailable, "the registry has too many open connections; try again later"
		if reason == metrics.ReasonPerClient {
			code, msg = CodeTooManyRequests, "too many open connections from this address; try again later"
		}
		b, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: code.Name, Message: msg}}})
		_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s\n",
			code.Status, http.StatusText(code.Status), len(b)+1, b)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
		}
	}()
}

// limitedConn releases its place when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// idleBody fails a body read that makes no progress for idle: each read
// gets a fresh read deadline on the connection. Failed reads become client
// errors.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	m    *metrics.Limits
}

func (b *idleBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == nil || err == io.EOF:
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.m.BodyTimeouts.Inc()
		return n, errorf(CodeBodyTimeout, "no request body received for %s", b.idle)
	default:
		// The client's doing (it hung up mid-body): a client error, not
		// one of ours to log.
		return n, errorf(CodeBlobUploadInvalid, "request body ended early")
	}
	return n, err
}

// limitBody puts r's body under serve.body_idle_timeout.
func (h *Handler) limitBody(w http.ResponseWriter, r *http.Request) {
	idle := h.serve.BodyIdleTimeout.D()
	if idle <= 0 || r.Body == nil || r.Body == http.NoBody {
		return
	}
	rc := http.NewResponseController(w)
	// Also bounds what the server drains of a body the handler left unread.
	if rc.SetReadDeadline(time.Now().Add(idle)) != nil {
		return // not a connection with deadlines (tests' recorders)
	}
	r.Body = &idleBody{ReadCloser: r.Body, rc: rc, idle: idle, m: h.metrics.Limits}
}
