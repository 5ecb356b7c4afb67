#!/usr/bin/env python3
"""Does each defence in docs/SECURITY.md have a test that fails without it?

For each mutation below — one change that removes or loosens one defence —
this applies it to a scratch worktree of HEAD, runs the tests that claim to
cover the defence, and reports CAUGHT (a test failed) or MISSED (all
passed; the claim is not backed). The work tree is not touched.

    bench/mutations.py            # every mutation (about five minutes here)
    bench/mutations.py share      # those whose name contains "share"

Needs root for the tests that force socket buffers (TestOneClientCannotHoldTheLoop).
"""
import os, subprocess, sys, tempfile

# name, file, the text removed, what replaces it, the tests (a -run pattern), the package
MUTATIONS = [
    ('FIFO opened blocking',
     'internal/httpd/files.go',
     'unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK)',
     'unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY)',
     'TestSpecialFilesDoNotBlock', './internal/httpd'),
    ('climbing above / not refused',
     'internal/httpd/files.go',
     '\t\t\tif depth--; depth < 0 {\n\t\t\t\treturn true',
     '\t\t\tif depth--; depth < -1000 {\n\t\t\t\treturn true',
     'TestClimbingAboveTheRoot|TestServeFiles|TestParse', './internal/httpd'),
    ('RESOLVE_BENEATH dropped',
     'internal/httpd/files.go',
     '\t\t\thow.Resolve |= unix.RESOLVE_BENEATH',
     '\t\t\thow.Resolve |= 0',
     'TestContainment', './internal/httpd'),
    ('redirect segments not escaped',
     'internal/httpd/response.go',
     '\t\tb.WriteString(url.PathEscape(seg))',
     '\t\tb.WriteString(seg)',
     'TestRedirectLocation', './internal/httpd'),
    ('listing names not escaped',
     'internal/httpd/response.go',
     'label, href := ent.Name, "./"+url.PathEscape(ent.Name)',
     'label, href := ent.Name, ent.Name',
     'TestAutoindexLinksStayRelative|TestAutoindex', './internal/httpd'),
    ('accept does not pause on EMFILE',
     'internal/accept/accept.go',
     '\ttime.Sleep(exhaustionPause)\n\treturn true',
     '\treturn true',
     'TestDescriptorExhaustion', './...'),
    ('EMFILE at open is a 500',
     'internal/httpd/response.go',
     '\tcase unix.EMFILE, unix.ENFILE:\n\t\tif !e.files.shortLogged {',
     '\tcase unix.Errno(12345):\n\t\tif !e.files.shortLogged {',
     'TestOutOfDescriptors', './internal/httpd'),
    ('no TCP_DEFER_ACCEPT',
     'internal/master/listen.go',
     'unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, secs)',
     'unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1+0*secs)',
     'TestDeferAccept', './...'),
    ('access log counts the whole file',
     'internal/httpd/response.go',
     'e.endAnswer(&c.answerLog, int64(max(0, min(c.outOff, len(c.out))-c.headLen))+c.fileSent)',
     'e.endAnswer(&c.answerLog, int64(max(0, min(c.outOff, len(c.out))-c.headLen))+c.end)',
     'TestAccessLogCountsWhatWasSent', './internal/httpd'),
    ('no header timeout',
     'internal/httpd/engine.go',
     '\t\t\tif e.now.Sub(c.since) > e.cfg.HeaderTimeout {\n\t\t\t\te.fail(c, refuse(408',
     '\t\t\tif e.now.Sub(c.since) > 1000*e.cfg.HeaderTimeout {\n\t\t\t\te.fail(c, refuse(408',
     'TestTimeouts|TestSlowloris', './...'),
    ('TLS handshakes unbounded',
     'internal/httpd/tls.go',
     'refuse := e.stopped || len(e.shaking) >= e.cfg.WorkerConnections',
     'refuse := e.stopped',
     'TestTLSHandshakesBounded|TestTLSHandshakeFailures', './internal/httpd'),
    ('h2 CONTINUATION unbounded',
     'internal/httpd/h2.go',
     '\t\tif len(h.block)+len(p) > MaxHeaderBytes {\n\t\t\treturn errEnhanceYourCalm',
     '\t\tif len(h.block)+len(p) > 1000*MaxHeaderBytes {\n\t\t\treturn errEnhanceYourCalm',
     'TestH2Limits', './internal/httpd'),
    ('h2 unended streams unbounded',
     'internal/httpd/h2.go',
     '\t\tif len(h.open) >= 2*h2Streams {',
     '\t\tif len(h.open) >= 2000*h2Streams {',
     'TestH2UnendedStreamsBounded', './internal/httpd'),
    ('h2 streams unbounded',
     'internal/httpd/h2.go',
     '\tif len(h.streams) >= h2Streams || len(h.open) > h2Streams {',
     '\tif false {',
     'TestH2StreamLimit|TestH2UnendedStreamsBounded', './internal/httpd'),
    ('backlog above somaxconn not reported',
     'internal/master/master.go',
     '\tif max := somaxconn(); max > 0 && cfg.Backlog > max {',
     '\tif max := somaxconn(); false && max > 0 && cfg.Backlog > max {',
     'TestBacklogAboveSomaxconnIsReported', './...'),
    ('root not followed by the loop',
     'internal/httpd/engine.go',
     '\tswitch changed, err := e.files.refreshRoot(); {',
     '\tswitch changed, err := false, error(nil); {',
     'TestRootFollowsDeploy', './internal/httpd'),
    ('changed file not rechecked (valid forever)',
     'internal/httpd/files.go',
     'valid: time.Second, max: 4096',
     'valid: time.Hour, max: 4096',
     'TestChangedFileServedAnew', './internal/httpd'),
    ('TE with CL accepted',
     'internal/httpd/request.go',
     '\tcase r.encoding && (r.lengths > 0 || r.minor == 0):',
     '\tcase r.encoding && (r.minor == 0):',
     'TestLimitsAndMalformed|TestParseTable|TestParseProtocolDetails', './internal/httpd'),
    ('two CLs that differ accepted',
     'internal/httpd/request.go',
     '\t\tif !ok || (r.lengths > 0 && n != r.length) {',
     '\t\tif !ok {',
     'TestLimitsAndMalformed|TestParseTable', './internal/httpd'),
    ('h2 CR LF in values',
     'internal/httpd/h2.go',
     '\t\tif strings.ContainsAny(f.Value, "\\r\\n\\x00") {',
     '\t\tif strings.ContainsAny(f.Value, "\\x00") {',
     'TestH2Head|TestH2FlowControlAndFrames', './internal/httpd'),
    ('h2 stream window ignored',
     'internal/httpd/h2.go',
     '\t\tn := int(min(int64(h.maxFrame), h.window, s.window, s.left()))',
     '\t\tn := int(min(int64(h.maxFrame), h.window, s.left()))',
     'TestH2FlowControlAndFrames', './internal/httpd'),
    ('admin no header timeout',
     'internal/admin/admin.go',
     '\tReadHeaderTimeout = 5 * time.Second',
     '\tReadHeaderTimeout = 5000 * time.Second',
     'TestAdminIdleClientsAreBounded', './...'),
    ('no read share per turn',
     'internal/httpd/conn.go',
     '\tturnRead      = 4 * MaxHeaderBytes',
     '\tturnRead      = 1 << 40',
     'TestOneClientCannotHoldTheLoop|TestFrontTakesOneShare', './internal/httpd'),
    ('no send share per turn',
     'internal/httpd/conn.go',
     '\tturnSend      = 2 << 20',
     '\tturnSend      = 1 << 40',
     'TestOneClientCannotHoldTheLoop|TestFrontTakesOneShare', './internal/httpd'),
    ('control bytes in field values accepted',
     'internal/httpd/request.go',
     "\t\tif c < ' ' && c != '\\t' || c == 0x7f {",
     "\t\tif false && (c < ' ' && c != '\\t' || c == 0x7f) {",
     'TestLimitsAndMalformed|TestParseTable|FuzzParse', './internal/httpd'),
    ('two Host fields accepted',
     'internal/httpd/request.go',
     '\t\tif r.host || !validHost(value) {',
     '\t\tif !validHost(value) {',
     'TestLimitsAndMalformed|TestParseTable', './internal/httpd'),
    ('folded lines and space before a colon accepted',
     'internal/httpd/request.go',
     '\tif colon <= 0 || !isToken(line[:colon]) {',
     '\tif colon <= 0 {',
     'TestLimitsAndMalformed|TestParseTable', './internal/httpd'),
    ('an Expect other than 100-continue accepted',
     'internal/httpd/request.go',
     '\t\tif !fold(value, "100-continue") {',
     '\t\tif false {',
     'TestLimitsAndMalformed|TestParseTable|TestParseProtocolDetails', './internal/httpd'),
    ('h2 DATA on an idle stream accepted',
     'internal/httpd/h2.go',
     '\t\tif id == 0 || id > h.lastID {\n\t\t\treturn errProtocol // no stream, or an idle one',
     '\t\tif id == 0 {\n\t\t\treturn errProtocol // no stream, or an idle one',
     'TestH2ProtocolErrors', './internal/httpd'),
    ('Range: a last byte before the first accepted',
     'internal/httpd/response.go',
     '\t\t\t\tif !ok || l < a {',
     '\t\t\t\tif !ok {',
     'TestByteRange|TestRangeAnswers|FuzzRange', './internal/httpd'),
    ('Range: the unit matched case-sensitively',
     'internal/httpd/response.go',
     '\tif !ok || !fold(trim(unit), "bytes") {',
     '\tif !ok || string(trim(unit)) != "bytes" {',
     'TestByteRange|TestRangeAnswers', './internal/httpd'),
    ('Range: several ranges answered with the last',
     'internal/httpd/response.go',
     '\tcase satisfiable > 1 || atStart:',
     '\tcase atStart:',
     'TestByteRange|TestRangeAnswers', './internal/httpd'),
    ('If-Range: a weak ETag accepted',
     'internal/httpd/response.go',
     '\treturn !strings.HasPrefix(v, "W/") && (v == etag || v == lastMod)',
     '\treturn v == etag || v == lastMod || strings.TrimPrefix(v, "W/") == etag',
     'TestNotModifiedAndIfRange|TestConditionalAndRange', './internal/httpd'),
    ('If-Match and If-Unmodified-Since ignored',
     'internal/httpd/response.go',
     '\tif preconditionFailed(req.ifMatch, req.iums, f.etag, f.mtime) {',
     '\tif false && preconditionFailed(req.ifMatch, req.iums, f.etag, f.mtime) {',
     'TestConditionalAndRange|TestEnginesAgree', './internal/httpd'),
    ('If-Match compared weakly',
     'internal/httpd/response.go',
     'tag == etag && !strings.HasPrefix(tag, "W/") {',
     'strings.TrimPrefix(tag, "W/") == etag {',
     'TestNotModifiedAndIfRange|TestConditionalAndRange', './internal/httpd'),
    ('absolute-form authority not checked',
     'internal/httpd/request.go',
     '\t\tif len(authority) == 0 || !validHost(authority) {',
     '\t\tif len(authority) == 0 || !validHost(authority[:0]) {',
     'TestParseProtocolDetails', './internal/httpd'),
    ('bare LF line endings refused',
     'internal/httpd/request.go',
     "\ti := bytes.IndexByte(buf[from:], '\\n')\n\tif i < 0 {",
     "\ti := bytes.IndexByte(buf[from:], '\\n')\n\tif i < 0 || i == 0 || buf[from+i-1] != '\\r' {",
     'TestParseProtocolDetails|TestProtocolDetailsOverTheWire', './internal/httpd'),
    ('HTTP/1.2 refused',
     'internal/httpd/request.go',
     "\tif version[5] != '1' {",
     "\tif version[5] != '1' || version[7] > '1' {",
     'TestParseProtocolDetails|TestProtocolDetailsOverTheWire', './internal/httpd'),
    ('an upper-case scheme in an absolute target refused',
     'internal/httpd/request.go',
     '!(fold(target[:colon], "http") || fold(target[:colon], "https"))',
     '!(string(target[:colon]) == "http" || string(target[:colon]) == "https")',
     'TestParseProtocolDetails|TestProtocolDetailsOverTheWire', './internal/httpd'),
    ('empty lines before the request line refused',
     'internal/httpd/request.go',
     '\t\tif bytes.HasPrefix(buf[start:], []byte("\\r\\n")) {\n\t\t\tstart += 2',
     '\t\tif false {\n\t\t\tstart += 2',
     'TestParseProtocolDetails|TestProtocolDetailsOverTheWire', './internal/httpd'),
    ('a chunked body on a GET not read',
     'internal/httpd/conn.go',
     '\tcase req.chunked:\n\t\tnext, end, perr := chunkedBody(',
     '\tcase false:\n\t\tnext, end, perr := chunkedBody(',
     'TestChunkedBody|TestProtocolDetailsOverTheWire|TestParseProtocolDetails', './internal/httpd'),
    ('request line unbounded',
     'internal/httpd/request.go',
     '\tMaxRequestLine = 8 << 10',
     '\tMaxRequestLine = 8 << 20',
     'TestLimitsAndMalformed|TestParseTable', './internal/httpd'),
    ('head unbounded',
     'internal/httpd/request.go',
     '\tMaxHeaderBytes = 16 << 10',
     '\tMaxHeaderBytes = 16 << 20',
     'TestLimitsAndMalformed|TestParseTable', './internal/httpd'),
    ('header fields unbounded in number',
     'internal/httpd/request.go',
     '\tMaxHeaders     = 100',
     '\tMaxHeaders     = 100000',
     'TestLimitsAndMalformed|TestParseTable', './internal/httpd'),
    ('a body on a GET unbounded',
     'internal/httpd/request.go',
     '\tMaxBody        = 64 << 10',
     '\tMaxBody        = 64 << 20',
     'TestLimitsAndMalformed|TestChunkedBody|TestParseTable', './internal/httpd'),
    ('a non-loopback admin address accepted at the check',
     'internal/master/config.go',
     '\t\t\tif ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {\n\t\t\t\treturn fmt.Errorf("admin %s: must be a loopback address or a unix socket", cfg.Admin)',
     '\t\t\tif ip := net.ParseIP(host); false && (ip == nil || !ip.IsLoopback()) {\n\t\t\t\treturn fmt.Errorf("admin %s: must be a loopback address or a unix socket", cfg.Admin)',
     'TestServeErrors|TestConfigFileAndEnvironment|TestAdmin', './...'),
    ('the worker count unchecked',
     'internal/master/config.go',
     '\tif cfg.Workers < 1 || cfg.Workers > maxWorkers {',
     '\tif false {',
     'TestServeErrors', './...'),
    ('a root that is a file accepted',
     'internal/httpd/static.go',
     '\tif !fi.IsDir() {\n\t\treturn nil, fmt.Errorf("root %s: not a directory", root)',
     '\tif false && !fi.IsDir() {\n\t\treturn nil, fmt.Errorf("root %s: not a directory", root)',
     'TestServeErrors', './...'),
    ('TLS records charged by their bytes alone',
     'internal/httpd/conn.go',
     '\ttlsRecordCost = 1 << 10',
     '\ttlsRecordCost = 0',
     'TestSmallTLSRecordsTakeTheirShare', './internal/httpd'),
    ('h2 streams opened without a bound per turn',
     'internal/httpd/h2.go',
     '\th2TurnStreams = 2 * h2Streams',
     '\th2TurnStreams = 1 << 30',
     'TestH2RapidResetTakesItsTurn', './internal/httpd'),
    ('the wait blocks while a connection waits for its share',
     'internal/httpd/engine.go',
     '\t\t\ttimeout = 0 // connections wait for their next share (again)',
     '\t\t\ttimeout = max(timeout, 0)',
     'TestQueuedConnectionIsNotKeptWaiting', './internal/httpd'),
]


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    if not any(only in m[0] for m in MUTATIONS):
        sys.exit(f"bench/mutations.py: no mutation's name contains {only!r}")
    repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    tree = tempfile.mkdtemp(prefix="herd-mutations-")
    subprocess.run(["git", "-C", repo, "worktree", "add", "-q", "--detach", tree, "HEAD"], check=True)
    missed = 0
    try:
        print(f"# bench/mutations.py at {head}: one defence removed at a time, its tests run")
        for name, path, old, new, tests, pkg in MUTATIONS:
            if only not in name:
                continue
            file = os.path.join(tree, path)
            text = open(file).read()
            if text.count(old) != 1:
                print(f"STALE   {name}: the text to change is found {text.count(old)} times in {path}")
                missed += 1
                continue
            open(file, "w").write(text.replace(old, new))
            try:
                r = subprocess.run(["go", "test", "-count=1", "-timeout", "90s", "-run", tests, pkg],
                                   cwd=tree, capture_output=True, text=True)
            finally:
                open(file, "w").write(text)
            out = r.stdout + r.stderr
            if "build failed" in out or "setup failed" in out:
                verdict = "BROKEN "  # the mutation does not compile: fix the list
                missed += 1
            elif r.returncode != 0:
                verdict = "CAUGHT "
            else:
                verdict = "MISSED "
                missed += 1
            failed = [l.split()[2] for l in out.splitlines() if l.strip().startswith("--- FAIL:") and "/" not in l.split()[2]]
            if not failed and "panic: test timed out" in out:
                failed = ["(timed out)"]
            print(f"{verdict} {name}  [{path}; {', '.join(failed[:4]) or tests}]", flush=True)
    finally:
        subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", tree])
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
