locals {
  api_target_groups = [aws_lb_target_group.api_public.arn, aws_lb_target_group.api_internal.arn]
}

# The Kubernetes API from outside: a network load balancer passing TLS through to the API
# servers; kubeapi_access_list is enforced by the API layer's security group.
resource "aws_lb" "api_public" {
  name                             = "${local.lb_name}-api"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = aws_subnet.public[*].id
  enable_cross_zone_load_balancing = true

  tags = { Name = "${local.name}-api" }
}

# The API servers behind the public load balancer.
resource "aws_lb_target_group" "api_public" {
  name        = "${local.lb_name}-api"
  port        = 6443
  protocol    = "TCP"
  target_type = "instance"
  vpc_id      = aws_vpc.main.id

  health_check {
    protocol = "TCP"
  }
}

# https://<load balancer>:443 → API servers :6443.
resource "aws_lb_listener" "api_public" {
  load_balancer_arn = aws_lb.api_public.arn
  port              = 443
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api_public.arn
  }
}

# Inside the VPC: kube.<environment>.<zone> for nodes, secure.<environment>.<zone> for etcd clients.
resource "aws_lb" "internal" {
  name                             = "${local.lb_name}-int"
  load_balancer_type               = "network"
  internal                         = true
  subnets                          = aws_subnet.private[*].id
  enable_cross_zone_load_balancing = true

  tags = { Name = "${local.name}-internal" }
}

# The API servers behind the internal load balancer.
resource "aws_lb_target_group" "api_internal" {
  name        = "${local.lb_name}-api-int"
  port        = 6443
  protocol    = "TCP"
  target_type = "instance"
  vpc_id      = aws_vpc.main.id

  health_check {
    protocol = "TCP"
  }
}

# https://kube.<environment>.<zone>:443 → API servers :6443.
resource "aws_lb_listener" "api_internal" {
  load_balancer_arn = aws_lb.internal.arn
  port              = 443
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api_internal.arn
  }
}

# The etcd members' client port behind the internal load balancer.
resource "aws_lb_target_group" "etcd" {
  name        = "${local.lb_name}-etcd"
  port        = 2379
  protocol    = "TCP"
  target_type = "instance"
  vpc_id      = aws_vpc.main.id

  health_check {
    protocol = "TCP"
  }
}

# secure.<environment>.<zone>:2379 → etcd members (TLS passes through; clients need etcd's CA).
resource "aws_lb_listener" "etcd" {
  load_balancer_arn = aws_lb.internal.arn
  port              = 2379
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.etcd.arn
  }
}
