module github.com/herd-run/herd

go 1.26.8

require golang.org/x/sys v0.49.0

require golang.org/x/net v0.62.0

require github.com/HdrHistogram/hdrhistogram-go v1.4.0
