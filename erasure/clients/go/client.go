// Package zstor is a client for the zstor daemon (`zos stor daemon`), the HTTP API described
// in erasure/docs/openapi.yaml: erasure-coded objects over zdb backends.
//
// It uses only the standard library. Object bodies stream both ways:
//
//	client := zstor.NewUnixClient("/home/me/.local/state/zos/stor/zstor.sock", token)
//	report, err := client.Put(ctx, "backups/db.tar", file, size)
//	n, err := client.GetTo(ctx, "backups/db.tar", output)
package zstor

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Error is a request the daemon refused or failed. Status is the HTTP status (401 wrong
// token, 404 no such object, 503 too few backends); Message names the backends involved.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("zstor: HTTP %d: %s", e.Status, e.Message) }

// IsNotFound tells whether err is the daemon's 404.
func IsNotFound(err error) bool {
	var zerr *Error
	return errors.As(err, &zerr) && zerr.Status == http.StatusNotFound
}

// PutReport is the result of a put.
type PutReport struct {
	Name           string   `json:"name"`
	Size           int64    `json:"size"`
	Chunks         int64    `json:"chunks"`
	Blake3         string   `json:"blake3"`
	DegradedChunks int64    `json:"degraded_chunks"`
	FailedBackends []string `json:"failed_backends"`
}

// ObjectInfo is an object as listed.
type ObjectInfo struct {
	Name         string `json:"name"`
	Size         int64  `json:"size"`
	Chunks       int64  `json:"chunks"`
	DataShards   int    `json:"data_shards"`
	ParityShards int    `json:"parity_shards"`
	Blake3       string `json:"blake3"`
	Generation   uint64 `json:"generation"`
}

// ShardProblem is a shard that is missing, corrupt, unreachable or on a removed backend.
type ShardProblem struct {
	Chunk   int64  `json:"chunk"`
	Shard   int    `json:"shard"`
	Backend string `json:"backend"`
	Problem string `json:"problem"`
}

// ObjectCheck is the result of checking one object.
type ObjectCheck struct {
	Name              string         `json:"name"`
	Chunks            int64          `json:"chunks"`
	ShardsOK          int64          `json:"shards_ok"`
	Problems          []ShardProblem `json:"problems"`
	MetadataMissingOn []string       `json:"metadata_missing_on"`
	ChunksUnreadable  int64          `json:"chunks_unreadable"`
}

// ObjectRepair is the result of repairing one object.
type ObjectRepair struct {
	Name              string   `json:"name"`
	ShardsRebuilt     int64    `json:"shards_rebuilt"`
	Failures          []string `json:"failures"`
	MetadataRewritten bool     `json:"metadata_rewritten"`
}

// BackendStatus is the health of one backend.
type BackendStatus struct {
	Backend   string  `json:"backend"`
	Group     *string `json:"group"`
	Reachable bool    `json:"reachable"`
	Error     *string `json:"error"`
	Entries   *uint64 `json:"entries"`
	UsedBytes *uint64 `json:"used_bytes"`
	FreeBytes *uint64 `json:"free_bytes"`
}

// Client talks to one daemon.
type Client struct {
	http  *http.Client
	base  string
	token string
}

// NewUnixClient talks to the daemon's unix socket.
func NewUnixClient(socketPath, token string) *Client {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dialer net.Dialer
			return dialer.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConnsPerHost:   4,
		ResponseHeaderTimeout: 5 * time.Minute,
	}
	return &Client{http: &http.Client{Transport: transport}, base: "http://zstor", token: token}
}

// NewTCPClient talks to the daemon at baseURL, e.g. "http://127.0.0.1:9980".
func NewTCPClient(baseURL, token string) *Client {
	return &Client{http: &http.Client{}, base: strings.TrimRight(baseURL, "/"), token: token}
}

func objectPath(key string) (string, error) {
	if key == "" || len(key) > 200 {
		return "", fmt.Errorf("zstor: object keys are 1 to 200 bytes, got %d", len(key))
	}
	parts := strings.Split(key, "/")
	for i, part := range parts {
		parts[i] = url.PathEscape(part)
	}
	return "/v1/objects/" + strings.Join(parts, "/"), nil
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, length int64) (*http.Response, error) {
	request, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	request.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		request.ContentLength = length // -1: chunked
		request.Header.Set("Content-Type", "application/octet-stream")
	}
	response, err := c.http.Do(request)
	if err != nil {
		return nil, err
	}
	if response.StatusCode >= 400 {
		defer response.Body.Close()
		text, _ := io.ReadAll(io.LimitReader(response.Body, 1<<20))
		var decoded struct {
			Error string `json:"error"`
		}
		message := string(text)
		if json.Unmarshal(text, &decoded) == nil && decoded.Error != "" {
			message = decoded.Error
		}
		return nil, &Error{Status: response.StatusCode, Message: message}
	}
	return response, nil
}

func (c *Client) getJSON(ctx context.Context, method, path string, out interface{}) error {
	response, err := c.do(ctx, method, path, nil, 0)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	return json.NewDecoder(response.Body).Decode(out)
}

// Put stores body as key, streaming it. Give length when known, or -1 to send it chunked.
func (c *Client) Put(ctx context.Context, key string, body io.Reader, length int64) (*PutReport, error) {
	path, err := objectPath(key)
	if err != nil {
		return nil, err
	}
	response, err := c.do(ctx, http.MethodPut, path, body, length)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	var report PutReport
	if err := json.NewDecoder(response.Body).Decode(&report); err != nil {
		return nil, err
	}
	return &report, nil
}

// GetTo streams object key into w and returns the bytes written. A body that ends before
// its Content-Length (the daemon could not read the rest) is an error.
func (c *Client) GetTo(ctx context.Context, key string, w io.Writer) (int64, error) {
	path, err := objectPath(key)
	if err != nil {
		return 0, err
	}
	response, err := c.do(ctx, http.MethodGet, path, nil, 0)
	if err != nil {
		return 0, err
	}
	defer response.Body.Close()
	written, err := io.Copy(w, response.Body)
	if err != nil {
		return written, &Error{Status: http.StatusServiceUnavailable, Message: fmt.Sprintf("object %q ended early after %d bytes: %v", key, written, err)}
	}
	if response.ContentLength >= 0 && written != response.ContentLength {
		return written, &Error{Status: http.StatusServiceUnavailable, Message: fmt.Sprintf("object %q ended early: %d of %d bytes", key, written, response.ContentLength)}
	}
	return written, nil
}

// Get reads a whole object into memory.
func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	var buffer strings.Builder
	if _, err := c.GetTo(ctx, key, &buffer); err != nil {
		return nil, err
	}
	return []byte(buffer.String()), nil
}

// Head returns the size and hex blake3 of an object.
func (c *Client) Head(ctx context.Context, key string) (size int64, blake3 string, err error) {
	path, err := objectPath(key)
	if err != nil {
		return 0, "", err
	}
	response, err := c.do(ctx, http.MethodHead, path, nil, 0)
	if err != nil {
		return 0, "", err
	}
	response.Body.Close()
	size, _ = strconv.ParseInt(response.Header.Get("Content-Length"), 10, 64)
	return size, strings.Trim(response.Header.Get("ETag"), `"`), nil
}

// Delete removes an object.
func (c *Client) Delete(ctx context.Context, key string) error {
	path, err := objectPath(key)
	if err != nil {
		return err
	}
	response, err := c.do(ctx, http.MethodDelete, path, nil, 0)
	if err != nil {
		return err
	}
	return response.Body.Close()
}

// List returns every object.
func (c *Client) List(ctx context.Context) ([]ObjectInfo, error) {
	var objects []ObjectInfo
	return objects, c.getJSON(ctx, http.MethodGet, "/v1/objects", &objects)
}

func keyQuery(key string) string {
	if key == "" {
		return ""
	}
	return "?" + url.Values{"key": {key}}.Encode()
}

// Check verifies every shard of key, or of all objects when key is "".
func (c *Client) Check(ctx context.Context, key string) ([]ObjectCheck, error) {
	var checks []ObjectCheck
	return checks, c.getJSON(ctx, http.MethodPost, "/v1/check"+keyQuery(key), &checks)
}

// Repair rebuilds missing or corrupt shards of key, or of all objects when key is "".
func (c *Client) Repair(ctx context.Context, key string) ([]ObjectRepair, error) {
	var repairs []ObjectRepair
	return repairs, c.getJSON(ctx, http.MethodPost, "/v1/repair"+keyQuery(key), &repairs)
}

// Status reports the health of every backend.
func (c *Client) Status(ctx context.Context) ([]BackendStatus, error) {
	var statuses []BackendStatus
	return statuses, c.getJSON(ctx, http.MethodGet, "/v1/status", &statuses)
}

// PutChunk stores a chunk under its id (low level, the interface flists use).
func (c *Client) PutChunk(ctx context.Context, id, data []byte) error {
	response, err := c.do(ctx, http.MethodPut, "/v1/chunks/"+hex.EncodeToString(id), strings.NewReader(string(data)), int64(len(data)))
	if err != nil {
		return err
	}
	return response.Body.Close()
}

// GetChunk returns a chunk; IsNotFound(err) when absent.
func (c *Client) GetChunk(ctx context.Context, id []byte) ([]byte, error) {
	response, err := c.do(ctx, http.MethodGet, "/v1/chunks/"+hex.EncodeToString(id), nil, 0)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	return io.ReadAll(response.Body)
}
