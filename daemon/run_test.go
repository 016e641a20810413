package daemon

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
)

// TestRunLayersStopsInOrder: the layers stop from the last to the first,
// each only once the later ones returned; a failing runtime stops the
// process and its error is returned.
func TestRunLayersStopsInOrder(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for _, tt := range []struct {
		name string
		fail bool
	}{{"cancelled", false}, {"a runtime fails", true}} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var stopped []string
			started := make(chan struct{}, 3)
			wait := func(name string) Runtime {
				return runFunc(func(ctx context.Context) error {
					started <- struct{}{}
					<-ctx.Done()
					mu.Lock()
					stopped = append(stopped, name)
					mu.Unlock()
					return nil
				})
			}
			failing := make(chan struct{})
			front := []Runtime{wait("front"), runFunc(func(ctx context.Context) error {
				select {
				case <-failing:
					return boom
				case <-ctx.Done():
					return nil
				}
			})}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			calls := 0
			go func() {
				done <- runLayers(ctx, [][]Runtime{{wait("bus")}, {wait("pulls")}, front}, func() { calls++ })
			}()
			for range 3 {
				<-started
			}
			if tt.fail {
				close(failing)
			} else {
				cancel()
			}
			err := <-done
			if want := []string{"front", "pulls", "bus"}; !slices.Equal(stopped, want) {
				t.Errorf("stopped %v, want %v", stopped, want)
			}
			if (err != nil) != tt.fail || (tt.fail && !errors.Is(err, boom)) {
				t.Errorf("error %v, want failure %v", err, tt.fail)
			}
			if calls != 1 {
				t.Errorf("stopping called %d times", calls)
			}
		})
	}
}
