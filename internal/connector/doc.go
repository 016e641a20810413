// Package connector fetches content from upstream registries (through
// regclient) and from other local registries, with credentials, repository
// filters, bounded concurrency and one typed error.
package connector
