//go:build linux

package httpd

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// HTTP/2 (RFC 9113) in the native loop, for TLS connections that negotiate
// it by ALPN. The loop reads frames from the connection's buffer, as it
// reads HTTP/1 heads; a request's header block is decoded (HPACK, by
// x/net's hpack) and written out as the HTTP/1.1 head it stands for, so
// the same parser judges it and the same code answers it; the answer's
// head is then encoded back into a HEADERS frame, and its body leaves in
// DATA frames as the client's flow-control windows allow — streams in
// turn, a frame each, so one large file does not hold the small ones up.
// nginx's HTTP/2 module works on the same plan: its own framing over the
// answer code it shares with HTTP/1.
//
// What the engine does not do: server push (a client's SETTINGS_ENABLE_PUSH
// is never needed), priorities (ignored, as RFC 9113 lets a server), and
// request bodies, which a static server has no use for (read, counted for
// flow control, and dropped).

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Frame types, flags, settings and error codes (RFC 9113 6, 7, 11).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	framePriority     = 0x2
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePushPromise  = 0x5
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	settingHeaderTableSize   = 0x1
	settingEnablePush        = 0x2
	settingMaxConcurrent     = 0x3
	settingInitialWindowSize = 0x4
	settingMaxFrameSize      = 0x5
	settingMaxHeaderListSize = 0x6

	errNone            = 0x0
	errProtocol        = 0x1
	errFlowControl     = 0x3
	errStreamClosed    = 0x5
	errFrameSize       = 0x6
	errRefused         = 0x7
	errCompression     = 0x9
	errEnhanceYourCalm = 0xb
)

const (
	h2FrameMax    = 16 << 10  // the largest frame a client may send (the protocol's default, never raised)
	h2Streams     = 128       // concurrent streams a client may open (SETTINGS_MAX_CONCURRENT_STREAMS)
	h2WindowStart = 65535     // every flow-control window at the start (RFC 9113 6.9.2)
	h2Batch       = 64 << 10  // plaintext framed before it is sealed and sent
	h2Backlog     = 256 << 10 // output waiting for the client: read no more frames until it drains
	h2MaxWindow   = 1<<31 - 1

	// h2TurnStreams bounds the streams one connection opens in a turn of
	// the loop: a client that opens and resets streams as fast as it can
	// ("rapid reset", CVE-2023-44487) never has more than h2Streams open,
	// yet each costs an answer. nginx 1.25.3 bounds them the same way, to
	// twice its concurrent streams per event loop iteration. A HEADERS
	// frame past the bound waits in the buffer for the next turn.
	h2TurnStreams = 2 * h2Streams
)

// h2conn is a connection's HTTP/2 state.
type h2conn struct {
	preface  bool // the client's preface was read
	dec      *hpack.Decoder
	enc      *hpack.Encoder
	encBuf   bytes.Buffer
	block    []byte              // a header block waiting for its CONTINUATION frames
	blockID  uint32              // its stream, or 0
	blockEnd bool                // its HEADERS frame ended the stream
	reqBuf   []byte              // a request's head, written out as HTTP/1.1 for the parser
	fields   []hpack.HeaderField // the block's fields, decoded
	listSize uint32              // their size, as SETTINGS_MAX_HEADER_LIST_SIZE counts it
	tooLarge bool                // the list passed MaxHeaderBytes: answered 431

	out    []byte // frames not yet sealed
	sealed int    // bytes of out sealed

	window     int64 // the connection's send window
	initWindow int64 // the client's SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame   int   // the client's SETTINGS_MAX_FRAME_SIZE

	streams  map[uint32]*h2stream // answers still sending
	ready    []*h2stream          // streams with body left and window to send it, in turn
	lastID   uint32               // the highest stream the client opened
	open     map[uint32]*h2recv   // streams whose client has not ended its side (a body may come)
	selfDep  bool                 // the header block's HEADERS made its stream depend on itself
	goAway   bool                 // GOAWAY sent: no new streams, close once the open ones end
	peerGone bool                 // the client sent GOAWAY

	turn   uint64 // the loop's turn that opened counts in
	opened int    // streams opened in that turn (h2TurnStreams)
}

// h2recv is what is known of a request body still arriving.
type h2recv struct {
	length int64 // its Content-Length, or -1
	got    int64 // DATA received (padding not counted)
	reset  bool  // the stream was reset: what still comes is dropped
}

// resetStream ends stream id with a stream error.
func (e *Engine) resetStream(c *conn, id uint32, code uint32) {
	h := c.h2
	h.out = appendRSTStream(h.out, id, code)
	if s := h.streams[id]; s != nil {
		e.endStream(c, s)
	}
	if r := h.open[id]; r != nil {
		r.reset = true
	}
}

// h2stream is one answer being sent.
type h2stream struct {
	id       uint32
	window   int64
	body     []byte // small body left to send
	file     *file  // or a file's range, off to end
	off, end int64
	sent     int64
	queued   bool // in ready
	log      answerLog
}

func (s *h2stream) left() int64 {
	if s.file != nil {
		return s.end - s.off
	}
	return int64(len(s.body))
}

// startH2 makes c an HTTP/2 connection and queues the server's preface.
func (e *Engine) startH2(c *conn) {
	h := &h2conn{window: h2WindowStart, initWindow: h2WindowStart, maxFrame: h2FrameMax,
		streams: map[uint32]*h2stream{}, open: map[uint32]*h2recv{}}
	h.dec = hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		// The list is bounded as a head is (MaxHeaderBytes), counted as
		// SETTINGS_MAX_HEADER_LIST_SIZE counts it: a small block can name
		// large table entries many times over.
		if h.listSize += f.Size(); h.listSize > MaxHeaderBytes || len(h.fields) >= MaxHeaders {
			h.tooLarge = true
			h.dec.SetEmitEnabled(false)
			return
		}
		h.fields = append(h.fields, f)
	})
	h.dec.SetMaxStringLength(MaxHeaderBytes)
	h.enc = hpack.NewEncoder(&h.encBuf)
	h.out = appendFrameHeader(h.out, 12, frameSettings, 0, 0)
	h.out = appendSetting(h.out, settingMaxConcurrent, h2Streams)
	h.out = appendSetting(h.out, settingMaxHeaderListSize, MaxHeaderBytes)
	c.h2 = h
}

func appendFrameHeader(b []byte, length int, typ, flags byte, id uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), typ, flags,
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
}

func appendSetting(b []byte, id uint16, v uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(b, id), v)
}

// serveH2 reads and handles what the client sent, and sends what is due,
// until the socket is empty or full.
func (e *Engine) serveH2(c *conn) {
	h := c.h2
	for {
		if len(h.out)-h.sealed < h2Backlog && !e.h2Frames(c) {
			return // closed
		}
		if e.draining.Load() && !h.goAway {
			e.goAway(c, errNone)
		}
		if !e.flushH2(c) {
			return // the socket is full (EPOLLOUT calls again) or closed
		}
		// Everything due has been sent: flushH2 returns true only then.
		if e.h2Done(c) {
			return
		}
		if !e.read(c) {
			return
		}
	}
}

// h2Done closes a connection that has said GOAWAY, or heard it, once its
// answers are sent. true: closed.
func (e *Engine) h2Done(c *conn) bool {
	h := c.h2
	if (!h.goAway && !h.peerGone) || len(h.streams) > 0 || len(h.out) > 0 || c.sock.sent < len(c.sock.out) {
		return false
	}
	e.closeNotify(c)
	e.closeConn(c)
	return true
}

// goAway tells the client no stream after the last it opened will be
// answered.
func (e *Engine) goAway(c *conn, code uint32) {
	h := c.h2
	h.out = appendFrameHeader(h.out, 8, frameGoAway, 0, 0)
	h.out = binary.BigEndian.AppendUint32(h.out, h.lastID)
	h.out = binary.BigEndian.AppendUint32(h.out, code)
	h.goAway = true
}

// h2Fail ends the connection on a connection error: GOAWAY with the code,
// sent if the socket takes it, then a lingering close — the client is
// likely still sending, and a close with unread bytes would reset the
// connection and destroy the GOAWAY before the client reads it.
func (e *Engine) h2Fail(c *conn, code uint32) {
	e.goAway(c, code)
	e.flushH2(c)
	if e.conns[c.fd] == c {
		e.linger(c)
	}
}

// h2Frames handles every whole frame in the read buffer. false: the
// connection was closed.
func (e *Engine) h2Frames(c *conn) bool {
	h := c.h2
	buf := c.rbuf
	pos := 0
	defer func() {
		if e.conns[c.fd] == c {
			c.rbuf = c.rbuf[:copy(c.rbuf, buf[pos:])]
		}
	}()
	if !h.preface {
		if len(buf) < len(h2Preface) {
			if !strings.HasPrefix(h2Preface, string(buf)) {
				e.closeConn(c)
				return false
			}
			return true
		}
		if string(buf[:len(h2Preface)]) != h2Preface {
			e.closeConn(c)
			return false
		}
		h.preface, pos = true, len(h2Preface)
	}
	for len(h.out)-h.sealed < h2Backlog {
		if len(buf)-pos < 9 {
			return true
		}
		length := int(buf[pos])<<16 | int(buf[pos+1])<<8 | int(buf[pos+2])
		typ, flags := buf[pos+3], buf[pos+4]
		id := binary.BigEndian.Uint32(buf[pos+5:]) & 0x7fffffff
		if length > h2FrameMax {
			e.h2Fail(c, errFrameSize)
			return false
		}
		if len(buf)-pos < 9+length {
			return true
		}
		if typ == frameHeaders {
			if h.turn != e.turn {
				h.turn, h.opened = e.turn, 0
			}
			if h.opened >= h2TurnStreams {
				e.yieldReads(c) // the rest waits in the buffer for the next turn
				return true
			}
			h.opened++
		}
		payload := buf[pos+9 : pos+9+length]
		pos += 9 + length
		c.since = e.now
		if h.blockID != 0 && (typ != frameContinuation || id != h.blockID) {
			e.h2Fail(c, errProtocol) // a header block is not interrupted (RFC 9113 6.10)
			return false
		}
		if code := e.h2Frame(c, typ, flags, id, payload); code != 0 {
			e.h2Fail(c, code)
			return false
		}
		if e.conns[c.fd] != c {
			return false
		}
	}
	return true
}

// h2Frame handles one frame; a non-zero result is a connection error.
func (e *Engine) h2Frame(c *conn, typ, flags byte, id uint32, p []byte) uint32 {
	h := c.h2
	switch typ {
	case frameData:
		if id == 0 || id > h.lastID {
			return errProtocol // no stream, or an idle one
		}
		size := len(p) // what flow control counts, padding included
		if flags&flagPadded != 0 {
			if len(p) < 1 || int(p[0]) >= len(p) {
				return errProtocol
			}
			p = p[1 : len(p)-int(p[0])]
		}
		r := h.open[id]
		if r == nil {
			return errStreamClosed // the client ended its side already
		}
		// A body is dropped; its bytes are given back to both windows, so
		// the client can go on sending it.
		if size > 0 {
			h.out = appendWindowUpdate(h.out, 0, size)
			if flags&flagEndStream == 0 {
				h.out = appendWindowUpdate(h.out, id, size)
			}
		}
		r.got += int64(len(p))
		end := flags&flagEndStream != 0
		if end {
			delete(h.open, id)
		}
		if !r.reset && r.length >= 0 && (r.got > r.length || end && r.got != r.length) {
			// The body does not match its Content-Length: malformed
			// (RFC 9113 8.1.1).
			r.reset = true
			e.resetStream(c, id, errProtocol)
		}
	case frameHeaders:
		if id == 0 || id%2 == 0 {
			return errProtocol
		}
		if flags&flagPadded != 0 {
			if len(p) < 1 || int(p[0]) >= len(p) {
				return errProtocol
			}
			p = p[1 : len(p)-int(p[0])]
		}
		h.selfDep = false
		if flags&flagPriority != 0 {
			if len(p) < 5 {
				return errFrameSize
			}
			h.selfDep = binary.BigEndian.Uint32(p)&0x7fffffff == id
			p = p[5:]
		}
		if id <= h.lastID {
			return errStreamClosed // streams are never reopened; trailers are not expected
		}
		h.lastID = id
		h.block = append(h.block[:0], p...)
		h.blockEnd = flags&flagEndStream != 0
		if flags&flagEndHeaders == 0 {
			h.blockID = id
			return 0
		}
		return e.h2Request(c, id)
	case frameContinuation:
		if id == 0 || id != h.blockID {
			return errProtocol
		}
		if len(h.block)+len(p) > MaxHeaderBytes {
			return errEnhanceYourCalm
		}
		h.block = append(h.block, p...)
		if flags&flagEndHeaders != 0 {
			h.blockID = 0
			return e.h2Request(c, id)
		}
	case framePriority:
		if id == 0 {
			return errProtocol
		}
		if len(p) != 5 {
			return errFrameSize
		}
		if binary.BigEndian.Uint32(p)&0x7fffffff == id {
			e.resetStream(c, id, errProtocol) // a stream cannot depend on itself
		}
	case frameRSTStream:
		if id == 0 {
			return errProtocol
		}
		if len(p) != 4 {
			return errFrameSize
		}
		if id > h.lastID {
			return errProtocol // an idle stream
		}
		if s := h.streams[id]; s != nil {
			e.endStream(c, s)
		}
		delete(h.open, id)
	case frameSettings:
		if id != 0 {
			return errProtocol
		}
		if flags&flagAck != 0 {
			if len(p) != 0 {
				return errFrameSize
			}
			return 0
		}
		if len(p)%6 != 0 {
			return errFrameSize
		}
		for ; len(p) > 0; p = p[6:] {
			v := binary.BigEndian.Uint32(p[2:])
			switch binary.BigEndian.Uint16(p) {
			case settingEnablePush:
				if v > 1 {
					return errProtocol
				}
			case settingHeaderTableSize:
				h.enc.SetMaxDynamicTableSizeLimit(min(v, 4096))
			case settingInitialWindowSize:
				if v > h2MaxWindow {
					return errFlowControl
				}
				delta := int64(v) - h.initWindow
				h.initWindow = int64(v)
				for _, s := range h.streams {
					s.window += delta
					e.h2Queue(h, s)
				}
			case settingMaxFrameSize:
				if v < h2FrameMax || v > 1<<24-1 {
					return errProtocol
				}
				h.maxFrame = int(min(v, 1<<20))
			}
		}
		h.out = appendFrameHeader(h.out, 0, frameSettings, flagAck, 0)
	case framePushPromise:
		return errProtocol // a client never pushes
	case framePing:
		if id != 0 {
			return errProtocol
		}
		if len(p) != 8 {
			return errFrameSize
		}
		if flags&flagAck == 0 {
			h.out = appendFrameHeader(h.out, 8, framePing, flagAck, 0)
			h.out = append(h.out, p...)
		}
	case frameGoAway:
		if id != 0 {
			return errProtocol
		}
		h.peerGone = true
	case frameWindowUpdate:
		if len(p) != 4 {
			return errFrameSize
		}
		inc := int64(binary.BigEndian.Uint32(p) & 0x7fffffff)
		if id == 0 {
			if inc == 0 || h.window+inc > h2MaxWindow {
				return errFlowControl
			}
			h.window += inc
			return 0
		}
		if id > h.lastID {
			return errProtocol // an idle stream
		}
		s := h.streams[id]
		switch {
		case inc == 0:
			e.resetStream(c, id, errProtocol)
		case s != nil && s.window+inc > h2MaxWindow:
			e.resetStream(c, id, errFlowControl)
		case s != nil:
			s.window += inc
			e.h2Queue(h, s)
		}
	}
	return 0 // unknown frame types are ignored (RFC 9113 5.5)
}

func appendWindowUpdate(b []byte, id uint32, n int) []byte {
	b = appendFrameHeader(b, 4, frameWindowUpdate, 0, id)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

func appendRSTStream(b []byte, id uint32, code uint32) []byte {
	b = appendFrameHeader(b, 4, frameRSTStream, 0, id)
	return binary.BigEndian.AppendUint32(b, code)
}

// h2Request answers the request whose header block is complete.
func (e *Engine) h2Request(c *conn, id uint32) uint32 {
	h := c.h2
	if err := h.decode(); err != nil {
		return errCompression // the decoder's state is lost: the connection with it
	}
	fields := h.fields
	if !h.blockEnd {
		// Streams the client has not ended count against the limit too
		// (RFC 9113 5.1.2), and are remembered, refused ones included, so
		// that the body still coming is dropped quietly — up to a bound.
		if len(h.open) >= 2*h2Streams {
			return errEnhanceYourCalm
		}
		h.open[id] = &h2recv{length: -1}
	}
	if h.goAway {
		return 0 // after GOAWAY, new streams are not answered (the client retries them)
	}
	if h.selfDep {
		e.resetStream(c, id, errProtocol) // a stream cannot depend on itself
		return 0
	}
	if len(h.streams) >= h2Streams || len(h.open) > h2Streams {
		e.resetStream(c, id, errRefused)
		return 0
	}
	head, ok := h2Head(h.reqBuf[:0], fields)
	h.reqBuf = head
	if !ok && !h.tooLarge {
		e.resetStream(c, id, errProtocol) // malformed (RFC 9113 8.1.1)
		return 0
	}
	req := &c.req
	c.out = c.out[:0]
	perr := errTooLarge
	if !h.tooLarge {
		_, perr = parseInto(req, head)
	}
	if r := h.open[id]; r != nil && perr == nil && req.lengths > 0 {
		r.length = req.length // the DATA to come must add up to it
	}
	if perr != nil {
		c.head = false
		e.errorPage(c, perr.status, perr.reason, nil)
		e.account(c, nil)
	} else {
		e.respond(c, req)
	}
	e.h2Answer(c, id)
	return 0
}

// decode decodes the header block into fields, as far as the list's bound
// allows (tooLarge beyond it). Every block is decoded whole, even one that
// will be refused: the decoder's table must follow the client's encoder.
func (h *h2conn) decode() error {
	h.fields, h.listSize, h.tooLarge = h.fields[:0], 0, false
	h.dec.SetEmitEnabled(true)
	if _, err := h.dec.Write(h.block); err != nil {
		return err
	}
	return h.dec.Close()
}

// h2Head writes a request's fields out as the HTTP/1.1 head they stand
// for. ok=false: the request is malformed — a pseudo-header after a
// field, an unknown or repeated one, an upper-case name, a field HTTP/2
// forbids (connection-specific), or a value with a line break or NUL,
// which could otherwise add a line to the head.
func h2Head(b []byte, fields []hpack.HeaderField) (_ []byte, ok bool) {
	var method, path, authority, scheme string
	regular, hasHost := false, false
	for _, f := range fields {
		if strings.ContainsAny(f.Value, "\r\n\x00") {
			return b, false
		}
		if strings.HasPrefix(f.Name, ":") {
			if regular {
				return b, false
			}
			var into *string
			switch f.Name {
			case ":method":
				into = &method
			case ":path":
				into = &path
			case ":authority":
				into = &authority
			case ":scheme":
				into = &scheme
			default:
				return b, false
			}
			if *into != "" || f.Value == "" {
				return b, false
			}
			*into = f.Value
			continue
		}
		regular = true
		if f.Name == "host" {
			hasHost = true
		}
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return b, false
		case "te":
			if f.Value != "trailers" {
				return b, false
			}
		}
		if f.Name != strings.ToLower(f.Name) {
			return b, false
		}
	}
	if method == "" || path == "" || scheme == "" {
		return b, false
	}
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\n"...)
	if authority != "" && !hasHost {
		b = append(b, "host: "...)
		b = append(b, authority...)
		b = append(b, "\r\n"...)
	}
	for _, f := range fields {
		if !strings.HasPrefix(f.Name, ":") {
			b = append(b, f.Name...)
			b = append(b, ": "...)
			b = append(b, f.Value...)
			b = append(b, "\r\n"...)
		}
	}
	return append(b, "\r\n"...), true
}

// h2Answer turns the answer the engine built in c.out (and c.file) into a
// stream: its head into a HEADERS frame, its body queued for DATA frames.
func (e *Engine) h2Answer(c *conn, id uint32) {
	h := c.h2
	h.encBuf.Reset()
	h.enc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(c.status)})
	head := c.out[:c.headLen]
	if i := bytes.Index(head, []byte("\r\n")); i >= 0 {
		head = head[i+2:] // after the status line
	}
	for len(head) > 2 {
		i := bytes.Index(head, []byte("\r\n"))
		if i < 0 {
			break
		}
		line := head[:i]
		head = head[i+2:]
		name, value, ok := bytes.Cut(line, []byte(": "))
		if !ok || len(name) == 0 {
			continue
		}
		lname := lowerField(name)
		if lname == "connection" {
			continue // connection-specific: no place in HTTP/2
		}
		h.enc.WriteField(hpack.HeaderField{Name: lname, Value: string(value)})
	}
	s := &h2stream{id: id, window: h.initWindow, log: c.answerLog}
	c.answerLog = answerLog{}
	if c.file != nil {
		s.file, s.off, s.end = c.file, c.off, c.end
		c.file = nil
	} else if body := c.out[c.headLen:]; len(body) > 0 {
		s.body = append([]byte(nil), body...)
	}
	c.out = c.out[:0]
	// The head: one HEADERS frame, and CONTINUATION frames if it is
	// larger than the client's frame size.
	block := h.encBuf.Bytes()
	flags := byte(0)
	if s.left() == 0 {
		flags = flagEndStream
	}
	typ := byte(frameHeaders)
	for {
		n := min(len(block), h.maxFrame)
		f := flags
		if n == len(block) {
			f |= flagEndHeaders
		}
		h.out = appendFrameHeader(h.out, n, typ, f, id)
		h.out = append(h.out, block[:n]...)
		block, typ, flags = block[n:], frameContinuation, 0
		if len(block) == 0 {
			break
		}
	}
	if s.left() == 0 {
		e.endAnswer(&s.log, 0)
		return
	}
	h.streams[id] = s
	e.h2Queue(h, s)
}

// lowerField is a field name of the engine's heads in HTTP/2's lower case,
// without an allocation for the ones it writes.
func lowerField(name []byte) string {
	switch string(name) {
	case "Server":
		return "server"
	case "Date":
		return "date"
	case "Content-Type":
		return "content-type"
	case "Content-Length":
		return "content-length"
	case "Accept-Ranges":
		return "accept-ranges"
	case "Last-Modified":
		return "last-modified"
	case "ETag":
		return "etag"
	case "Connection":
		return "connection"
	}
	return strings.ToLower(string(name))
}

// h2Queue puts a stream with body left and window to send it in line.
func (e *Engine) h2Queue(h *h2conn, s *h2stream) {
	if !s.queued && s.window > 0 && s.left() > 0 {
		s.queued = true
		h.ready = append(h.ready, s)
	}
}

// endStream ends a stream, its answer sent or reset.
func (e *Engine) endStream(c *conn, s *h2stream) {
	h := c.h2
	delete(h.streams, s.id)
	if s.file != nil {
		e.files.release(s.file)
		s.file = nil
	}
	e.endAnswer(&s.log, s.sent)
	s.body = nil
	if s.queued {
		for i, q := range h.ready {
			if q == s {
				h.ready = append(h.ready[:i], h.ready[i+1:]...)
				break
			}
		}
		s.queued = false
	}
}

// h2Fill frames more of the streams' bodies, a frame per stream in turn,
// as far as the windows allow, up to a batch. false: nothing was added.
func (e *Engine) h2Fill(c *conn) bool {
	h := c.h2
	start := len(h.out)
	for len(h.ready) > 0 && h.window > 0 && len(h.out)-start < h2Batch {
		s := h.ready[0]
		h.ready = h.ready[1:]
		s.queued = false
		n := int(min(int64(h.maxFrame), h.window, s.window, s.left()))
		flags := byte(0)
		if int64(n) == s.left() {
			flags = flagEndStream
		}
		h.out = appendFrameHeader(h.out, n, frameData, flags, s.id)
		if s.file != nil {
			at := len(h.out)
			h.out = slices.Grow(h.out, n)[:at+n]
			got, err := unix.Pread(s.file.fd, h.out[at:], s.off)
			if err != nil || got != n {
				e.closeConn(c) // the file shrank under us: the answer cannot be completed
				return false
			}
			s.off += int64(n)
		} else {
			h.out = append(h.out, s.body[:n]...)
			s.body = s.body[n:]
		}
		s.sent += int64(n)
		s.window -= int64(n)
		h.window -= int64(n)
		if flags&flagEndStream != 0 {
			e.endStream(c, s)
			continue
		}
		e.h2Queue(h, s)
	}
	return len(h.out) > start
}

// flushH2 seals and sends the frames due, and frames more bodies as the
// socket takes them. false: the socket is full (EPOLLOUT calls again) or
// the connection was closed.
func (e *Engine) flushH2(c *conn) bool {
	h := c.h2
	for {
		if !e.sendSealed(c) {
			return false
		}
		if h.sealed < len(h.out) {
			if !e.seal(c, h.out[h.sealed:]) {
				return false
			}
			h.sealed = len(h.out)
			continue
		}
		h.out, h.sealed = h.out[:0], 0
		if !e.h2Fill(c) {
			return e.conns[c.fd] == c
		}
	}
}

// closeH2 ends the streams of a connection being closed.
func (e *Engine) closeH2(c *conn) {
	for _, s := range c.h2.streams {
		e.endStream(c, s)
	}
}

// sweepH2 applies the engine's timeouts to an HTTP/2 connection: the send
// timeout while answers wait for the client, the header timeout for its
// preface, the keep-alive timeout when it has nothing open.
func (e *Engine) sweepH2(c *conn) {
	h := c.h2
	idle := e.now.Sub(c.since)
	switch {
	case len(h.streams) > 0 || c.sock.sent < len(c.sock.out):
		if idle <= e.cfg.SendTimeout {
			return
		}
	case !h.preface:
		if idle <= e.cfg.HeaderTimeout {
			return
		}
	case idle <= e.cfg.IdleTimeout:
		return
	}
	if !h.goAway {
		e.goAway(c, errNone)
		e.flushH2(c)
	}
	if e.conns[c.fd] == c {
		e.closeConn(c)
	}
}
