# Names and tags shared by every file.
locals {
  name     = "${var.environment}-${var.platform}"
  stacked  = var.topology == "stacked"
  vpc_cidr = "10.0.0.0/16"
  az_count = min(3, length(data.aws_availability_zones.available.names))
  azs      = slice(data.aws_availability_zones.available.names, 0, local.az_count)
  zone     = "${var.environment}.${var.dns_zone_name}"
  # Load balancer and target group names may have 32 characters (the longest suffix is 8), and
  # a load balancer's must not begin with "internal-": a longer or such name is cut and given a
  # hash of the whole, so two environments never share one.
  lb_name = (length(local.name) <= 24 && !startswith(local.name, "internal-") ? local.name :
  "${substr(replace(local.name, "/^internal-/", "int-"), 0, 17)}-${substr(sha1(local.name), 0, 6)}")

  tags = merge(
    {
      Environment = var.environment
      Platform    = var.platform
      ManagedBy   = "kubeplat"
    },
    var.customer != "" ? { Customer = var.customer } : {},
  )

  # What the AWS cloud controller manager and the EBS CSI driver know the cluster's resources by
  # (subnets for load balancers, the one security group of each instance, instances).
  cluster_name = local.name
  cluster_tag  = { "kubernetes.io/cluster/${local.name}" = "owned" }

  # The layers that get an autoscaling group of their own.
  layers = local.stacked ? ["secure", "compute"] : ["secure", "control-plane", "compute"]
  # The layer whose instances serve the Kubernetes API.
  api_layer = local.stacked ? "secure" : "control-plane"
  # Each layer's cloud-config object in the secrets bucket.
  cloudconfig = { secure = "master", "control-plane" = "control-plane", compute = "worker" }
}
