package shm

// The request-duration histogram's buckets, on every platform (the herd
// package's Stats type names them; the scoreboard that fills them is
// Linux's).

// DurationBuckets are the upper bounds, in seconds, of the request duration
// histogram (Prometheus's own defaults for HTTP, with finer ones below 5ms,
// where static files are answered). The last bucket, +Inf, is Requests.
var DurationBuckets = [NumBuckets]float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// NumBuckets is the number of finite duration buckets.
const NumBuckets = 16
