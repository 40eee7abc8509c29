// Package gencache is the one bounded cache of the project: a map bounded
// in entries and in accounted bytes that approximates an LRU with two
// generations. The verified-token cache (token), the decision cache
// (authz) and the decoded-document cache (replica) are each a Cache with
// their own keys, values, size function and rules on top (token expiry,
// decision admission and data versions, document stamps).
//
// Each shard puts new entries into a current generation; when it would
// exceed its share of the entry or byte budget, the current generation
// becomes the previous one (dropping the old previous one) and a new current
// generation starts. A hit in the previous generation moves the entry into
// the current one, so an entry in steady use survives the swaps. At most the
// budget is held: per shard, two generations of at most
// budget/(2×shards) each. A value larger than one generation's share is not
// stored.
//
// # Concurrency
//
// A Cache is safe for concurrent use. Get takes a shard's read lock (and its
// write lock only to move a hit out of the previous generation); Put takes
// the shard's write lock after the value's size is computed. Invalidate
// starts a new epoch: a PutAt with a value computed before it (an older
// epoch) is dropped, so a result derived from state that an invalidation
// replaced never enters the cache.
package gencache
