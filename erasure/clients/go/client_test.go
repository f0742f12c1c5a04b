package zstor

// Tests against a real `zos stor daemon` over six real zdb servers (4+2). Binaries come from
// ZDB_BIN and ZOS_BIN, or are built with cargo from this repository.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

type cluster struct {
	zdbs   []*exec.Cmd
	ports  []int
	daemon *exec.Cmd
	client *Client
	socket string
	token  string
}

func binaries(t *testing.T) (string, string) {
	zdb, zos := os.Getenv("ZDB_BIN"), os.Getenv("ZOS_BIN")
	if zdb != "" && zos != "" {
		return zdb, zos
	}
	repo, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("cargo", "build", "-p", "dataplane", "--bin", "zdb", "-p", "control", "--bin", "zos")
	build.Dir = repo
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building zdb and zos with cargo (or set ZDB_BIN and ZOS_BIN): %v", err)
	}
	metadata := exec.Command("cargo", "metadata", "--format-version", "1", "--no-deps")
	metadata.Dir = repo
	out, err := metadata.Output()
	if err != nil {
		t.Fatalf("cargo metadata: %v", err)
	}
	var decoded struct {
		TargetDirectory string `json:"target_directory"`
	}
	if err := json.Unmarshal(out, &decoded); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(decoded.TargetDirectory, "debug", "zdb"), filepath.Join(decoded.TargetDirectory, "debug", "zos")
}

func freePort(t *testing.T) int {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}

func waitFor(t *testing.T, what string, ready func() bool) {
	deadline := time.Now().Add(20 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func startCluster(t *testing.T) *cluster {
	zdbBin, zosBin := binaries(t)
	root := t.TempDir()
	c := &cluster{}
	var backends []string
	for i := 0; i < 6; i++ {
		port := freePort(t)
		dir := filepath.Join(root, fmt.Sprintf("zdb%d", i))
		cmd := exec.Command(zdbBin, "--listen", "127.0.0.1", "--port", fmt.Sprint(port),
			"--data", filepath.Join(dir, "data"), "--index", filepath.Join(dir, "index"))
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting zdb: %v", err)
		}
		c.zdbs = append(c.zdbs, cmd)
		c.ports = append(c.ports, port)
		waitFor(t, "zdb", func() bool {
			conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
			if err == nil {
				conn.Close()
			}
			return err == nil
		})
		backends = append(backends, "--backend", fmt.Sprintf("zdb://127.0.0.1:%d/default", port))
	}
	config := filepath.Join(root, "stor.toml")
	args := append([]string{"stor", "init", "--data-shards", "4", "--parity-shards", "2", "--chunk-size", "1048576", "--config", config}, backends...)
	if out, err := exec.Command(zosBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("zos stor init: %v: %s", err, out)
	}
	text, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	match := regexp.MustCompile(`(?m)^token = "([0-9a-f]+)"`).FindSubmatch(text)
	if match == nil {
		t.Fatalf("no daemon token in %s", config)
	}
	c.token = string(match[1])
	c.socket = filepath.Join(root, "zstor.sock")
	c.daemon = exec.Command(zosBin, "stor", "daemon", "--config", config, "--socket", c.socket)
	c.daemon.Env = append(os.Environ(), "XDG_STATE_HOME="+filepath.Join(root, "state"))
	if err := c.daemon.Start(); err != nil {
		t.Fatalf("starting the daemon: %v", err)
	}
	waitFor(t, "the daemon's socket", func() bool { _, err := os.Stat(c.socket); return err == nil })
	c.client = NewUnixClient(c.socket, c.token)
	t.Cleanup(func() {
		for _, cmd := range append([]*exec.Cmd{c.daemon}, c.zdbs...) {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		}
	})
	return c
}

func (c *cluster) killZdb(i int) {
	_ = c.zdbs[i].Process.Kill()
	_ = c.zdbs[i].Wait()
}

func randomBytes(t *testing.T, n int) []byte {
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	return data
}

func TestObjectsAndFailures(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	data := randomBytes(t, 3*1024*1024+11)
	report, err := c.client.Put(ctx, "dir/object", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if report.Size != int64(len(data)) || report.Chunks != 4 || report.DegradedChunks != 0 {
		t.Fatalf("unexpected report %+v", report)
	}
	// A stream of unknown length goes chunked.
	if _, err := c.client.Put(ctx, "streamed", strings.NewReader(strings.Repeat("abc", 100000)), -1); err != nil {
		t.Fatalf("chunked put: %v", err)
	}
	got, err := c.client.Get(ctx, "dir/object")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %v (equal %v)", err, bytes.Equal(got, data))
	}
	size, hash, err := c.client.Head(ctx, "dir/object")
	if err != nil || size != int64(len(data)) || hash != report.Blake3 {
		t.Fatalf("head: %d %s %v", size, hash, err)
	}
	objects, err := c.client.List(ctx)
	if err != nil || len(objects) != 2 || objects[0].Name != "dir/object" {
		t.Fatalf("list: %+v %v", objects, err)
	}
	if _, err := NewUnixClient(c.socket, "wrong").List(ctx); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong token accepted: %v", err)
	}
	if err := c.client.PutChunk(ctx, []byte{0xab}, []byte("chunk")); err != nil {
		t.Fatal(err)
	}
	if chunk, err := c.client.GetChunk(ctx, []byte{0xab}); err != nil || string(chunk) != "chunk" {
		t.Fatalf("chunk: %q %v", chunk, err)
	}

	// Two backends dead: reads still work and status says which.
	c.killZdb(2)
	c.killZdb(5)
	got, err = c.client.Get(ctx, "dir/object")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get with two dead backends: %v", err)
	}
	statuses, err := c.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	down := 0
	for _, status := range statuses {
		if !status.Reachable {
			down++
		}
	}
	if down != 2 {
		t.Fatalf("%d backends reported down, want 2", down)
	}
	checks, err := c.client.Check(ctx, "dir/object")
	if err != nil || len(checks) != 1 || len(checks[0].Problems) == 0 {
		t.Fatalf("check: %+v %v", checks, err)
	}
	// A third: a clear error, never wrong bytes.
	c.killZdb(0)
	if _, err := c.client.Get(ctx, "dir/object"); err == nil {
		t.Fatal("get with three of six backends dead succeeded")
	}
	if err := c.client.Delete(ctx, "missing"); err == nil {
		t.Fatal("delete of a missing object succeeded")
	}
}
