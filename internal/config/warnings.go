package config

import (
	"fmt"
	"slices"
	"strings"
)

// Warnings lists what is valid but probably not meant, one line each with
// the field path; `regwarm config check` prints them. Today: a registry
// that reads another registry through a local connector (a promotion
// chain) under rules that let someone pull the first but not the second,
// so the second's content reaches them through the first.
func (c *Config) Warnings() []string {
	var out []string
	if c.Auth == nil {
		return nil // no auth: everyone may pull everything
	}
	for i, r := range c.Registries {
		for j, name := range r.Connectors {
			cn, ok := c.Connector(name)
			if !ok || cn.Registry == "" || cn.Registry == r.Name {
				continue
			}
			var who []string
			for _, u := range c.Auth.principals() {
				if c.Auth.Allowed(u, r.Name, "pull") && !c.Auth.Allowed(u, cn.Registry, "pull") {
					who = append(who, principalName(u))
				}
			}
			if len(who) == 0 {
				continue
			}
			out = append(out, fmt.Sprintf("registries[%d].connectors[%d]: %q: registry %s reads registry %s through this connector, "+
				"so %s's content is served under %s's rules: %s may pull %s but not %s",
				i, j, name, r.Name, cn.Registry, cn.Registry, r.Name, strings.Join(who, ", "), r.Name, cn.Registry))
		}
	}
	return out
}

// otherUser stands for a signed-in user no rule names (matched by "*").
const otherUser = "\x00other"

// anonymousUser is the name rules use for clients without credentials.
const anonymousUser = "anonymous"

// principals lists everyone the rules can tell apart: anonymous, each
// user named, and any other signed-in user.
func (a *Auth) principals() []string {
	out := []string{anonymousUser}
	for _, r := range a.Rules {
		for _, u := range r.Users {
			if u != "*" && !slices.Contains(out, u) {
				out = append(out, u)
			}
		}
	}
	return append(out, otherUser)
}

func principalName(u string) string {
	if u == otherUser {
		return "any other signed-in user"
	}
	return u
}

// Allowed reports whether the rules let user ("anonymous" for a client
// without credentials) do action on registry: the first rule matching the
// registry and the user decides; no match denies. It is the rule
// evaluation of the registry API, for checks made on the config alone.
func (a *Auth) Allowed(user, registry, action string) bool {
	for _, r := range a.Rules {
		if r.Registry != "*" && r.Registry != registry {
			continue
		}
		match := slices.Contains(r.Users, user)
		if user != anonymousUser && slices.Contains(r.Users, "*") {
			match = true
		}
		if match {
			return slices.Contains(r.Allow, action)
		}
	}
	return false
}
