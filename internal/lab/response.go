package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// response reads one HTTP/1.x answer as it arrives, in whatever pieces the
// socket gives: the header, kept until it is whole, then the body, which
// it counts without keeping — by Content-Length, by the chunked coding, or
// to the connection's end. The lab loads herd and the servers it is
// compared with (nginx, Apache, uWSGI and gunicorn apps), which between
// them use all three.
type response struct {
	head     []byte // the header so far, while it spans reads
	headDone bool
	status   int
	close    bool // the server closes the connection after this answer
	body     bodyKind
	left     int64 // bodyLength: bytes to come; bodyChunked: of the chunk
	bodyLen  int64 // body bytes received (decoded, if chunked)

	chunk     chunkState
	digits    int  // hex digits of the chunk size read so far
	lineEmpty bool // chunkTrailer: nothing but CR yet on this line
}

type bodyKind uint8

const (
	bodyNone bodyKind = iota
	bodyLength
	bodyChunked
	bodyToEOF
)

type chunkState uint8

const (
	chunkSize chunkState = iota
	chunkExt
	chunkData
	chunkDataEnd
	chunkTrailer
)

// maxHead bounds a header: a server that sends more is answering wrongly.
const maxHead = 64 << 10

var errMalformed = errors.New("malformed HTTP response")

func (r *response) reset() {
	*r = response{head: r.head[:0]}
}

// feed takes the next bytes of the connection, eof once it has ended.
// done: the answer is complete.
func (r *response) feed(p []byte, eof bool) (done bool, err error) {
	if !r.headDone {
		if eof {
			if len(r.head) == 0 {
				return false, io.EOF // closed before answering (a kept-alive connection's end)
			}
			return false, io.ErrUnexpectedEOF
		}
		src := p
		if len(r.head) > 0 {
			r.head = append(r.head, p...)
			src = r.head
		}
		// A header's end must start within maxHead bytes, whether it came
		// in one read or many.
		i := bytes.Index(src, []byte("\r\n\r\n"))
		if i > maxHead || (i < 0 && len(src) >= maxHead+4) {
			return false, fmt.Errorf("%w: header over %d bytes", errMalformed, maxHead)
		}
		if i < 0 {
			if len(r.head) == 0 {
				r.head = append(r.head, p...)
			}
			return false, nil
		}
		if err := r.parseHead(src[:i]); err != nil {
			return false, err
		}
		r.headDone = true
		p = src[i+4:]
		if r.body == bodyNone || (r.body == bodyLength && r.left == 0) {
			return true, nil
		}
	}
	switch r.body {
	case bodyLength:
		take := min(int64(len(p)), r.left)
		r.bodyLen += take
		r.left -= take
		if r.left == 0 {
			return true, nil
		}
	case bodyToEOF:
		r.bodyLen += int64(len(p))
		if eof {
			return true, nil
		}
	case bodyChunked:
		if done, err := r.chunked(p); done || err != nil {
			return done, err
		}
	}
	if eof {
		return false, io.ErrUnexpectedEOF
	}
	return false, nil
}

// parseHead reads the status line and the headers that frame the body.
func (r *response) parseHead(h []byte) error {
	line, rest, _ := bytes.Cut(h, []byte("\r\n"))
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	r.status = status
	http10 := line[7] == '0'
	r.close = http10
	length := int64(-1)
	chunked := false
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return fmt.Errorf("%w: header line %q", errMalformed, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 {
				return fmt.Errorf("%w: Content-Length %q", errMalformed, value)
			}
			length = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = hasToken(value, "chunked")
		case bytes.EqualFold(name, []byte("Connection")):
			if hasToken(value, "close") {
				r.close = true
			} else if http10 && hasToken(value, "keep-alive") {
				r.close = false
			}
		}
	}
	switch {
	case status/100 == 1 || status == 204 || status == 304:
		r.body = bodyNone
	case chunked:
		r.body = bodyChunked
	case length >= 0:
		r.body, r.left = bodyLength, length
	default:
		r.body, r.close = bodyToEOF, true
	}
	return nil
}

// hasToken reports whether the comma-separated header value v lists tok.
func hasToken(v []byte, tok string) bool {
	for part := range bytes.SplitSeq(v, []byte(",")) {
		if bytes.EqualFold(bytes.TrimSpace(part), []byte(tok)) {
			return true
		}
	}
	return false
}

// chunked decodes the chunked coding (RFC 9112 §7.1) as far as p goes,
// counting the data; done once the last chunk and the trailer have come.
func (r *response) chunked(p []byte) (done bool, err error) {
	for len(p) > 0 {
		if r.chunk == chunkData {
			take := min(int64(len(p)), r.left)
			r.bodyLen += take
			r.left -= take
			p = p[take:]
			if r.left == 0 {
				r.chunk = chunkDataEnd
			}
			continue
		}
		b := p[0]
		p = p[1:]
		switch r.chunk {
		case chunkSize:
			if v, ok := hexDigit(b); ok {
				if r.digits == 15 {
					return false, fmt.Errorf("%w: chunk size too long", errMalformed)
				}
				r.left = r.left<<4 | int64(v)
				r.digits++
				continue
			}
			switch b {
			case ';', ' ', '\t', '\r':
				r.chunk = chunkExt
			case '\n':
				if err := r.sized(); err != nil {
					return false, err
				}
			default:
				return false, fmt.Errorf("%w: chunk size", errMalformed)
			}
		case chunkExt:
			if b == '\n' {
				if err := r.sized(); err != nil {
					return false, err
				}
			}
		case chunkDataEnd:
			switch b {
			case '\n':
				r.chunk = chunkSize
			case '\r':
			default:
				return false, fmt.Errorf("%w: chunk not ended by CRLF", errMalformed)
			}
		case chunkTrailer:
			switch b {
			case '\n':
				if r.lineEmpty {
					return true, nil
				}
				r.lineEmpty = true
			case '\r':
			default:
				r.lineEmpty = false
			}
		}
	}
	return false, nil
}

// sized ends a chunk-size line: data follows, or the trailer after the
// last chunk.
func (r *response) sized() error {
	if r.digits == 0 {
		return fmt.Errorf("%w: chunk size", errMalformed)
	}
	r.digits = 0
	if r.left == 0 {
		r.chunk, r.lineEmpty = chunkTrailer, true
	} else {
		r.chunk = chunkData
	}
	return nil
}

func hexDigit(b byte) (byte, bool) {
	switch {
	case '0' <= b && b <= '9':
		return b - '0', true
	case 'a' <= b && b <= 'f':
		return b - 'a' + 10, true
	case 'A' <= b && b <= 'F':
		return b - 'A' + 10, true
	}
	return 0, false
}
