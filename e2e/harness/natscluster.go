package harness

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// NATSCluster is a JetStream cluster of Debian nats-server processes on
// loopback, named n1, n2, … (server_name; the processes are nats-n1, …).
// Each node is a *NATS: Stop, Kill and Start act on one node, and Start
// keeps its ports and store.
type NATSCluster struct {
	Nodes []*NATS

	t testing.TB
}

// StartNATSCluster starts size clustered nats-server processes (cluster
// "regwarm", full-mesh routes, JetStream on file storage in t.TempDir),
// waits until every node's /healthz is ready and all agree on a JetStream
// meta leader.
func StartNATSCluster(t testing.TB, size int) *NATSCluster {
	t.Helper()
	if size < 1 {
		t.Fatalf("StartNATSCluster: size %d", size)
	}
	c := &NATSCluster{t: t}
	routes := make([]string, size)
	clusterAddrs := make([]string, size)
	for i := range size {
		clusterAddrs[i] = FreeAddr(t)
		routes[i] = fmt.Sprintf("%q", "nats-route://"+clusterAddrs[i])
	}
	for i := range size {
		cluster := fmt.Sprintf(`cluster {
  name: regwarm
  listen: %q
  routes: [%s]
}
`, clusterAddrs[i], strings.Join(routes, ", "))
		name := fmt.Sprintf("n%d", i+1)
		n := startNATSNode(t, "nats-"+name, name, cluster)
		n.ClusterAddr = clusterAddrs[i]
		c.Nodes = append(c.Nodes, n)
	}
	// A node's /healthz answers 503 until JetStream has a meta leader, so
	// wait only once every node runs.
	for _, n := range c.Nodes {
		waitStart(t, n.Process, n.monitorURL(), ReadyTimeout, http.StatusOK)
	}
	c.WaitMetaLeader(ReadyTimeout)
	return c
}

// URLs returns every node's client URL.
func (c *NATSCluster) URLs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.URL()
	}
	return out
}

// URL returns the client URLs joined by commas, as nats.url and nats.go
// accept them.
func (c *NATSCluster) URL() string { return strings.Join(c.URLs(), ",") }

// WaitMetaLeader waits until every running node reports the same
// JetStream meta leader, and returns its server name.
func (c *NATSCluster) WaitMetaLeader(timeout time.Duration) string {
	c.t.Helper()
	var leader string
	Eventually(c.t, timeout, "the NATS cluster elects a JetStream meta leader", func() error {
		leader = ""
		for _, n := range c.Nodes {
			if exited, _ := n.Exited(); exited {
				continue
			}
			var jsz JSZ
			if err := n.Monitor("jsz", &jsz); err != nil {
				return err
			}
			switch l := jsz.MetaCluster.Leader; {
			case l == "":
				return fmt.Errorf("%s: no meta leader yet", n.ServerName)
			case leader == "":
				leader = l
			case l != leader:
				return fmt.Errorf("%s sees meta leader %s, another node %s", n.ServerName, l, leader)
			}
		}
		if leader == "" {
			return fmt.Errorf("no node running")
		}
		return nil
	})
	return leader
}

// JSZ is the part of nats-server's /jsz (with accounts, streams and
// consumers) that tests read.
type JSZ struct {
	MetaCluster struct {
		Name        string `json:"name"`
		Leader      string `json:"leader"`
		ClusterSize int    `json:"cluster_size"`
	} `json:"meta_cluster"`
	Accounts []struct {
		Name    string `json:"name"`
		Streams []struct {
			Name    string `json:"name"`
			Cluster struct {
				Leader string `json:"leader"`
			} `json:"cluster"`
			Consumers []struct {
				Name    string `json:"name"`
				Cluster struct {
					Leader string `json:"leader"`
				} `json:"cluster"`
			} `json:"consumer_detail"`
		} `json:"stream_detail"`
	} `json:"account_details"`
}

// Leaders returns, from this node's view, the leaders of stream and of
// its consumer (empty when unknown).
func (j JSZ) Leaders(stream, consumer string) (streamLeader, consumerLeader string) {
	for _, a := range j.Accounts {
		for _, s := range a.Streams {
			if s.Name != stream {
				continue
			}
			streamLeader = s.Cluster.Leader
			for _, cs := range s.Consumers {
				if cs.Name == consumer {
					consumerLeader = cs.Cluster.Leader
				}
			}
		}
	}
	return streamLeader, consumerLeader
}

// Connz is the part of nats-server's /connz that tests read.
type Connz struct {
	Connections []struct {
		CID  uint64 `json:"cid"`
		Name string `json:"name"`
		IP   string `json:"ip"`
		Port int    `json:"port"`
	} `json:"connections"`
}

// Monitor GETs a monitoring endpoint ("jsz", "connz", "varz") and decodes
// its JSON into out. "jsz" asks for account, stream and consumer details;
// "connz" for up to 1024 connections.
func (n *NATS) Monitor(endpoint string, out any) error {
	q := ""
	switch endpoint {
	case "jsz":
		q = "?accounts=true&streams=true&consumers=true"
	case "connz":
		q = "?limit=1024"
	}
	status, body, err := getBody(&http.Client{Timeout: 5 * time.Second}, "http://"+n.MonitorAddr+"/"+endpoint+q)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("%s /%s: status %d: %s", n.ServerName, endpoint, status, body)
	}
	return json.Unmarshal(body, out)
}
