locals {
  # The access lists as CIDRs: a bare IP means /32.
  ssh_cidrs = toset([for s in split(",", var.ssh_access_list) : strcontains(trimspace(s), "/") ? trimspace(s) : "${trimspace(s)}/32"])
  api_cidrs = toset([for s in split(",", var.kubeapi_access_list) : strcontains(trimspace(s), "/") ? trimspace(s) : "${trimspace(s)}/32"])
}

# One security group per layer; every rule below says who may reach what.
resource "aws_security_group" "layer" {
  for_each    = toset(local.layers)
  name        = "${local.name}-${each.key}"
  description = "kubeplat ${each.key} layer of ${var.environment}"
  vpc_id      = aws_vpc.main.id

  # Each instance has this one group: the cloud controller manager opens it to the load
  # balancers of Services (it needs exactly one group of an instance to carry the cluster tag).
  tags = merge(local.cluster_tag, { Name = "${local.name}-${each.key}", Layer = each.key })
}

# Nodes reach the internet for packages and pinned binaries (through the NAT gateway for private ones).
resource "aws_vpc_security_group_egress_rule" "all" {
  for_each          = aws_security_group.layer
  security_group_id = each.value.id
  description       = "Outbound: packages, binaries, AWS APIs"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

# SSH from ssh_access_list to the compute layer (the only layer with public addresses).
resource "aws_vpc_security_group_ingress_rule" "ssh_compute" {
  for_each          = local.ssh_cidrs
  security_group_id = aws_security_group.layer["compute"].id
  description       = "SSH from ssh_access_list"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

# SSH to the private layers only by way of a compute node (ProxyJump).
resource "aws_vpc_security_group_ingress_rule" "ssh_private" {
  for_each                     = toset([for l in local.layers : l if l != "compute"])
  security_group_id            = aws_security_group.layer[each.key].id
  description                  = "SSH from the compute layer (jump host)"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.layer["compute"].id

  # The sandbox's emulator drops descriptions of rules that reference a group; a description
  # is documentation only, so ignoring later edits keeps an unchanged run a no-op there.
  lifecycle {
    ignore_changes = [description]
  }
}

# The Kubernetes API from kubeapi_access_list (the network load balancer keeps client addresses).
resource "aws_vpc_security_group_ingress_rule" "api_public" {
  for_each          = local.api_cidrs
  security_group_id = aws_security_group.layer[local.api_layer].id
  description       = "Kubernetes API from kubeapi_access_list"
  ip_protocol       = "tcp"
  from_port         = 6443
  to_port           = 6443
  cidr_ipv4         = each.value
}

# The Kubernetes API from inside the VPC: nodes, the internal load balancer, health checks.
resource "aws_vpc_security_group_ingress_rule" "api_vpc" {
  security_group_id = aws_security_group.layer[local.api_layer].id
  description       = "Kubernetes API from the VPC (nodes, load balancer health checks)"
  ip_protocol       = "tcp"
  from_port         = 6443
  to_port           = 6443
  cidr_ipv4         = local.vpc_cidr
}

# etcd peers talk to each other.
resource "aws_vpc_security_group_ingress_rule" "etcd_peers" {
  security_group_id            = aws_security_group.layer["secure"].id
  description                  = "etcd peer and client traffic between members"
  ip_protocol                  = "tcp"
  from_port                    = 2379
  to_port                      = 2380
  referenced_security_group_id = aws_security_group.layer["secure"].id

  # The sandbox's emulator drops descriptions of rules that reference a group; a description
  # is documentation only, so ignoring later edits keeps an unchanged run a no-op there.
  lifecycle {
    ignore_changes = [description]
  }
}

# etcd clients: the control plane when it has its own layer, and the internal etcd load balancer.
resource "aws_vpc_security_group_ingress_rule" "etcd_clients" {
  security_group_id = aws_security_group.layer["secure"].id
  description       = "etcd client port from the private subnets (control plane, internal load balancer)"
  ip_protocol       = "tcp"
  from_port         = 2379
  to_port           = 2379
  cidr_ipv4         = cidrsubnet(local.vpc_cidr, 1, 1)
}

# The API server reaches every kubelet (logs, exec, metrics), control-plane nodes' included.
resource "aws_vpc_security_group_ingress_rule" "kubelet" {
  for_each                     = toset(local.layers)
  security_group_id            = aws_security_group.layer[each.key].id
  description                  = "kubelet API from the control plane"
  ip_protocol                  = "tcp"
  from_port                    = 10250
  to_port                      = 10250
  referenced_security_group_id = aws_security_group.layer[local.api_layer].id

  # The sandbox's emulator drops descriptions of rules that reference a group; a description
  # is documentation only, so ignoring later edits keeps an unchanged run a no-op there.
  lifecycle {
    ignore_changes = [description]
  }
}

# The rule that once covered the compute layer alone is kept, not recreated.
moved {
  from = aws_vpc_security_group_ingress_rule.kubelet
  to   = aws_vpc_security_group_ingress_rule.kubelet["compute"]
}

# The pod network (flannel's VXLAN) spans every node: control-plane nodes run pods too (webhooks
# and aggregated APIs must be reachable from the API servers).
resource "aws_vpc_security_group_ingress_rule" "pod_network" {
  for_each                     = { for pair in setproduct(local.layers, local.layers) : "${pair[0]}<-${pair[1]}" => pair }
  security_group_id            = aws_security_group.layer[each.value[0]].id
  description                  = "Pod network (VXLAN) from the ${each.value[1]} layer"
  ip_protocol                  = "udp"
  from_port                    = 8472
  to_port                      = 8472
  referenced_security_group_id = aws_security_group.layer[each.value[1]].id

  # The sandbox's emulator drops descriptions of rules that reference a group; a description
  # is documentation only, so ignoring later edits keeps an unchanged run a no-op there.
  lifecycle {
    ignore_changes = [description]
  }
}

# Pods talk to pods across compute nodes (flannel VXLAN) and to each other's services.
resource "aws_vpc_security_group_ingress_rule" "compute_internal" {
  security_group_id            = aws_security_group.layer["compute"].id
  description                  = "Pod network and node-to-node traffic within the compute layer"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.layer["compute"].id

  # The sandbox's emulator drops descriptions of rules that reference a group; a description
  # is documentation only, so ignoring later edits keeps an unchanged run a no-op there.
  lifecycle {
    ignore_changes = [description]
  }
}
