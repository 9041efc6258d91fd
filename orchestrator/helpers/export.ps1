<#
.SYNOPSIS
    keyfleet export helper: backs up this server's SCSM encryption key with SecureStorageBackup.exe.
.DESCRIPTION
    Sent after common.ps1 and conpty.ps1 as one script. -Params: tool_path, tool_timeout, tool_input;
    -Secret: the backup password. Runs "SecureStorageBackup.exe Backup <file>" with the tool's folder
    as working directory, the key file in a private temporary folder (Administrators and SYSTEM
    only), the password typed on the tool's stdin or into a pseudo console (tool_input), the tool
    stopped with its whole process tree after tool_timeout seconds; returns the key file (base64),
    its SHA-256 and size, every SCSM role of the server, its version, how the password was given,
    and the tool's exit code and output. The temporary folder is always removed; a removal that
    fails is reported as cleanup_warning, never instead of the result.
#>
Assert-Administrator
$roles = Get-ScsmRoles
$version = Get-ScsmVersion
# reported with a failure too, so the controller learns of an upgrade even when the backup fails
$global:KeyfleetServer = @{ roles = $roles; version = $version }
if ($null -eq $Secret -or $Secret.Length -eq 0) { Stop-Helper 'remote' 'no backup password was given' }
$timeout = Get-ToolTimeout
$tool = Get-RequiredTool
$folder = New-PrivateFolder
$result = $null
try {
    $keyFile = Join-Path $folder 'SMBackupkey.bin'
    $run = Invoke-Tool $tool 'Backup' $keyFile $timeout
    if ($run.exit -ne 0) {
        Stop-Helper 'tool-failed' ('SecureStorageBackup.exe Backup exited with code {0}: {1}' -f $run.exit, $run.output)
    }
    if (-not [IO.File]::Exists($keyFile)) {
        Stop-Helper 'tool-failed' "SecureStorageBackup.exe Backup exited with code 0 but wrote no key file: $($run.output)"
    }
    $bytes = [IO.File]::ReadAllBytes($keyFile)
    if ($bytes.Length -eq 0 -or $bytes.Length -gt $MaximumKeyFileBytes) {
        Stop-Helper 'tool-failed' ('SecureStorageBackup.exe Backup wrote a key file of {0} bytes (expected 1 to {1})' -f $bytes.Length, $MaximumKeyFileBytes)
    }
    $result = @{
        file   = [Convert]::ToBase64String($bytes)
        sha256 = Get-Sha256Hex $bytes
        size   = $bytes.Length
    } + (New-ToolResult $roles $version $tool $run)
}
finally {
    $cleanup = Remove-PrivateFolder $folder
}
if ($cleanup) { $result.cleanup_warning = $cleanup }
return $result
