package registryapi_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/regwarm/regwarm/internal/pull"
	"github.com/regwarm/regwarm/internal/store"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// pullRecorderBench is a pull.Recorder whose store is set once the
// benchmark's store exists, flushing every second as serve does.
type pullRecorderBench struct {
	r      *pull.Recorder
	st     lateStore
	cancel context.CancelFunc
	done   chan struct{}
}

// lateStore forwards to a store set after the recorder was built.
type lateStore struct{ store.PullRecorder }

func newPullRecorderBench(b *testing.B) *pullRecorderBench {
	p := &pullRecorderBench{done: make(chan struct{})}
	r, err := pull.New(&p.st)
	if err != nil {
		b.Fatal(err)
	}
	p.r = r
	return p
}

func (p *pullRecorderBench) start(_ *testing.B, st *store.FS) {
	p.st.PullRecorder = st
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { p.r.Run(ctx); close(p.done) }()
}

func (p *pullRecorderBench) stop(b *testing.B) {
	p.cancel()
	<-p.done
	got, err := p.st.LastPulled(context.Background(), store.Repo{Registry: "hub", Name: "team/app"})
	if err != nil || len(got) != 1 {
		b.Fatalf("pulls not recorded: %v %v", got, err)
	}
}
