//go:build !unix

package store

import "os"

// lockFile is a no-op here: every removal session counts as abandoned.
func lockFile(*os.File) (bool, error) { return true, nil }
