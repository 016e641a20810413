package cache

import (
	"context"
	"testing"
)

// A caller that arrives after a shared call returned must run the work
// again, never get the finished flight's (possibly outdated) result: a tag
// revalidated just before the upstream went down would otherwise be
// answered fresh instead of stale.
func TestSharedCallAfterResultRunsAgain(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	ctx := context.Background()
	for i := range 2000 {
		if _, err := f.cache.shared(ctx, "k", func(context.Context) (any, error) { return i, nil }); err != nil {
			t.Fatal(err)
		}
		v, err := f.cache.shared(ctx, "k", func(context.Context) (any, error) { return -1, nil })
		if err != nil {
			t.Fatal(err)
		}
		if v != -1 {
			t.Fatalf("call %d joined the finished flight (got %v)", i, v)
		}
	}
}
