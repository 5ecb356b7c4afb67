package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bootUnits is run by unshare in new PID and mount namespaces: it gives
// the namespace private /run, /tmp, /var and unit directories (nothing
// the boot does reaches the machine's), installs herd and the shipped
// units with the test's drop-ins, masks what a boot would do to the
// machine (tmpfiles wiping /tmp, sysctl, udev, networking), and becomes
// systemd, PID 1, starting only the two sockets.
const bootUnits = `set -e
src=$1 http=$2 https=$3
mount -t tmpfs tmpfs /run
mkdir -p /run/trial && cp -r "$src"/. /run/trial/
S=/run/trial
for d in /tmp /var/tmp /var/log /var/lib/systemd /var/lib/private /var/cache/private /etc/systemd/system /usr/local/bin /srv; do
	mkdir -p $d && mount -t tmpfs tmpfs $d
done
mkdir -p /srv/www /srv/tls
printf 'hello, herd\n' > /srv/www/hello.txt
cp $S/cert.pem $S/key.pem /srv/tls/
chmod 755 /srv /srv/www /srv/tls && chmod 644 /srv/www/hello.txt /srv/tls/*.pem
cp $S/herd /usr/local/bin/herd && chmod 755 /usr/local/bin/herd
U=/etc/systemd/system
cp $S/herd.service $S/herd.socket $S/herd-https.socket $U/
for u in herd.socket herd-https.socket herd.service; do
	mkdir -p $U/$u.d && printf '[Unit]\nDefaultDependencies=no\n' > $U/$u.d/trial-deps.conf
done
printf '[Socket]\nListenStream=\nListenStream=%s\n' $http > $U/herd.socket.d/trial.conf
printf '[Socket]\nListenStream=\nListenStream=%s\n' $https > $U/herd-https.socket.d/trial.conf
cat > $U/herd.service.d/trial.conf <<X
[Service]
Environment=HERD_TEST_MAIN=1
StandardOutput=append:/run/herd-trial.log
StandardError=append:/run/herd-trial.log
ExecStart=
ExecStart=/usr/local/bin/herd serve /srv/www --tls-cert /srv/tls/cert.pem --tls-key /srv/tls/key.pem --admin unix:/run/herd/admin.sock --pid /run/herd/herd.pid --access-log /var/log/herd/access.log
X
printf '[Unit]\nDefaultDependencies=no\nWants=herd.socket herd-https.socket\n' > $U/herd-trial.target
for u in sysinit.target basic.target systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.timer systemd-sysctl.service systemd-sysusers.service systemd-udevd.service systemd-udev-trigger.service systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-logind.service networking.service systemd-networkd.service systemd-modules-load.service systemd-random-seed.service systemd-remount-fs.service ldconfig.service systemd-binfmt.service systemd-hwdb-update.service systemd-journal-flush.service systemd-update-utmp.service; do
	ln -sf /dev/null $U/$u
done
exec env container=other /lib/systemd/systemd --system --unit=herd-trial.target --log-target=console --log-level=warning
`

// The operator's trial: the shipped units (docs/systemd: herd.socket,
// herd-https.socket and the hardened herd.service, with drop-ins only for
// the ports, the binary and the certificate's place) under a real
// systemd as PID 1, booted in PID and mount namespaces of the test's own.
// Plain HTTP and HTTPS (HTTP/2) from one service, socket activated;
// `systemctl reload` under a client loop on both drops nothing; `systemctl
// stop` drains. Skipped where systemd cannot boot this way.
func TestShippedUnitsUnderSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots systemd")
	}
	for _, tool := range []string{"unshare", "nsenter", "/lib/systemd/systemd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found (.ci/run installs systemd)", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces and mounts")
	}
	src := t.TempDir()
	os.Chmod(src, 0o755)
	cert, key := writeCert(t, t.TempDir(), 1)
	for from, to := range map[string]string{os.Args[0]: "herd", cert: "cert.pem", key: "key.pem",
		"../../docs/systemd/herd.service": "herd.service", "../../docs/systemd/herd.socket": "herd.socket",
		"../../docs/systemd/herd-https.socket": "herd-https.socket"} {
		b, err := os.ReadFile(from)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(src, to), b, 0o755))
	}
	httpAddr, httpsAddr := freeAddr(t), freeAddr(t)
	boot := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
		"sh", "-c", bootUnits, "boot", src, httpAddr, httpsAddr)
	var out strings.Builder
	boot.Stdout, boot.Stderr = &out, &out
	boot.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	must(t, boot.Start())
	t.Cleanup(func() {
		boot.Process.Kill() // --kill-child: systemd, and with it the namespace, goes too
		boot.Wait()
	})
	// systemd is unshare's child; once it has bound both sockets it runs.
	var pid1 int
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if pid1 == 0 {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", boot.Process.Pid, boot.Process.Pid))
			pid1, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if pid1 != 0 && listening(httpAddr) && listening(httpsAddr) {
			break
		}
		if time.Now().After(end) {
			t.Skipf("systemd did not come up in namespaces here:\n%s", out.String())
		}
	}
	in := func(args ...string) string {
		t.Helper()
		b, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid1), "-m", "-p"}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("%v: %v\n%s\nherd's log:\n%s", args, err, b, logOf(pid1))
		}
		return string(b)
	}
	want := []byte("hello, herd\n")
	https := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	// The first request starts the service (socket activation).
	if code, body, err := get(client(), "http://"+httpAddr+"/hello.txt"); err != nil || code != 200 || string(body) != string(want) {
		t.Fatalf("plain HTTP through herd.socket: %d %q %v\nherd's log:\n%s", code, body, err, logOf(pid1))
	}
	resp, err := https.Get("https://" + httpsAddr + "/hello.txt")
	if err != nil {
		t.Fatalf("HTTPS through herd-https.socket: %v\nherd's log:\n%s", err, logOf(pid1))
	}
	resp.Body.Close()
	if resp.Proto != "HTTP/2.0" || resp.StatusCode != 200 {
		t.Errorf("HTTPS: %s %d, want HTTP/2.0 200", resp.Proto, resp.StatusCode)
	}
	if s := strings.TrimSpace(in("systemctl", "is-active", "herd.service")); s != "active" {
		t.Errorf("herd.service is %q", s)
	}

	// A reload (HUP: new workers) under load on both listeners.
	stop := make(chan struct{})
	plainRes, secureRes := make(chan loadResult), make(chan loadResult)
	go func() { plainRes <- load("http://"+httpAddr+"/hello.txt", want, 4, 4000, 20*time.Second, stop) }()
	go func() {
		secureRes <- loadWith(tlsClient(), "https://"+httpsAddr+"/hello.txt", want, 4, 2000, 20*time.Second, stop)
	}()
	time.Sleep(300 * time.Millisecond)
	in("systemctl", "reload", "herd.service")
	time.Sleep(700 * time.Millisecond)
	close(stop)
	for what, ch := range map[string]chan loadResult{"plain": plainRes, "https": secureRes} {
		if r := <-ch; r.failed != 0 || r.sent == 0 {
			t.Errorf("%s during systemctl reload: %d of %d failed (%s)", what, r.failed, r.sent, r.firstErr)
		}
	}
	if log := logOf(pid1); !strings.Contains(log, "reload") {
		t.Errorf("no reload in herd's log:\n%s", log)
	}

	in("systemctl", "stop", "herd.service")
	if log := logOf(pid1); !strings.Contains(log, "graceful=true") || !strings.Contains(log, "herd master stopped") {
		t.Errorf("systemctl stop did not drain:\n%s", log)
	}
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// logOf is herd's stderr in the namespace of systemd pid1.
func logOf(pid1 int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/root/run/herd-trial.log", pid1))
	return string(b)
}
