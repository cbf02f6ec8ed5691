# The secure layer (etcd, and the control plane when stacked) and, with topology = "separate",
# the control-plane layer: private subnets, no public addresses.
locals {
  secure_layers = {
    secure = {
      flavor  = var.etcd_flavor
      min     = var.secure_asg_min
      max     = var.secure_asg_max
      grace   = 300
      public  = false
      subnets = aws_subnet.private[*].id
      # etcd members are replaced one at a time (AWS: 100% limits an instance refresh to one
      # instance at a time), each only after the one before joined (the launch hook).
      min_healthy  = 100
      max_healthy  = 100
      target_group = concat([aws_lb_target_group.etcd.arn], local.stacked ? local.api_target_groups : [])
    }
    control-plane = {
      flavor       = var.etcd_flavor
      min          = 2
      max          = 3
      grace        = 300
      public       = false
      subnets      = aws_subnet.private[*].id
      min_healthy  = 50
      max_healthy  = 100
      target_group = local.stacked ? [] : local.api_target_groups
    }
  }
}
