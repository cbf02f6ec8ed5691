# A private zone <environment>.<dns_zone_name>, visible only inside the VPC, so the cluster's
# names never shadow the rest of the user's domain.
resource "aws_route53_zone" "cluster" {
  name          = local.zone
  comment       = "kubeplat ${var.environment}"
  force_destroy = true

  vpc {
    vpc_id = aws_vpc.main.id
  }

  lifecycle {
    # The association is made once, at creation; the sandbox's emulator does not report it
    # back, and ignoring it keeps an unchanged run a no-op there.
    ignore_changes = [vpc]
  }
}

# kube.<environment>.<zone>: the API for nodes (the internal load balancer).
resource "aws_route53_record" "kube" {
  zone_id = aws_route53_zone.cluster.zone_id
  name    = "kube.${local.zone}"
  type    = "A"

  alias {
    name                   = aws_lb.internal.dns_name
    zone_id                = aws_lb.internal.zone_id
    evaluate_target_health = false
  }
}

# secure.<environment>.<zone>: etcd's client port (the internal load balancer).
resource "aws_route53_record" "secure" {
  zone_id = aws_route53_zone.cluster.zone_id
  name    = "secure.${local.zone}"
  type    = "A"

  alias {
    name                   = aws_lb.internal.dns_name
    zone_id                = aws_lb.internal.zone_id
    evaluate_target_health = false
  }
}
