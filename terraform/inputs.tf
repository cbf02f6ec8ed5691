# Inputs kubeplat computes and passes itself (not part of the environment file).

variable "userdata" {
  type        = map(string)
  description = "The rendered user-data stub of each layer (secure, compute, and control-plane when separate). Example: {secure = \"#!/bin/sh ...\"}."

  validation {
    condition     = alltrue([for layer, text in var.userdata : length(text) < 16384 && !can(regex("PRIVATE\\s+KEY", text))])
    error_message = "Each user-data stub must be under 16 KB and hold no private key."
  }
}
